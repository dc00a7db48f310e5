"""The bench's speed measurements: model, score model, PPO iterations per method, stage times."""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config, apply_overrides
from saferlhfv.io import read_metrics
from saferlhfv.stages import PIPELINE, PPO_METHODS, artifact_dir, resolve


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _corpus(cfg: Config):
    from saferlhfv.data.world import text_corpus

    return text_corpus(cfg.data) if cfg.model.family == "tiny" else None


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mb() -> float:
    """Current resident memory of this process (Linux /proc; falls back to the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(cfg: Config, *, batch_size: int = 8, new_tokens: int = 32, repeats: int = 5) -> dict[str, Any]:
    """Measure the preset's VLM; see the module docstring for the fields returned."""
    from saferlhfv.data.world import sft_dataset
    from saferlhfv.models.factory import count_parameters, load_vlm
    from saferlhfv.models.generation import encode_prompts, sampling_kwargs

    device = _device()
    model, processor = load_vlm(cfg.model, _corpus(cfg), seed=cfg.seed)
    model.to(device).train()
    sft = sft_dataset(cfg.data).select(range(batch_size))
    images, questions, responses = list(sft["image"]), list(sft["question"]), list(sft["response"])

    train_batch = encode_prompts(processor, images, questions, responses, padding_side="right").to(device)
    labels = train_batch["input_ids"].masked_fill(train_batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        loss = model(**train_batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_s = _median_time(train_step, repeats, device)

    model.eval()
    gen_batch = encode_prompts(processor, images, questions).to(device)

    @torch.no_grad()
    def generate():
        model.generate(**gen_batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **sampling_kwargs())

    gen_s = _median_time(generate, repeats, device)
    return {
        "preset": cfg.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "batch_size": batch_size,
        "train_sequence_length": int(train_batch["input_ids"].shape[1]),
        "train_step_s": round(train_s, 4),
        "train_samples_per_s": round(batch_size / train_s, 1),
        "new_tokens": new_tokens,
        "generate_s": round(gen_s, 4),
        "generate_tokens_per_s": round(batch_size * new_tokens / gen_s, 1),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
    }


def bench_score_model(cfg: Config, *, batch_size: int = 8, repeats: int = 5) -> dict[str, Any]:
    """One RM-V optimiser step on ``batch_size`` preference pairs (``2 x batch_size`` sequences): pairs/s."""
    from saferlhfv.data import load_preference_data
    from saferlhfv.models.collate import pair_batch
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.score import ScoreModel
    from saferlhfv.train.preference import pair_loss_fn, pair_view

    device = _device()
    backbone, processor = load_vlm(cfg.model, _corpus(cfg), seed=cfg.seed)
    model = ScoreModel(backbone, seed=cfg.seed).to(device).train()
    pairs = load_preference_data(cfg.data, "train")
    views = [pair_view(pairs[i], "reward") for i in range(min(batch_size, len(pairs)))]
    batch = pair_batch(
        processor, [v["image"] for v in views], [v["question"] for v in views], [v["a"] for v in views],
        [v["b"] for v in views],
    ).to(device)  # fmt: skip
    n = len(views)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    loss_fn = pair_loss_fn("reward", cfg)  # the RM-V stage's own loss

    def train_step():
        loss, _ = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = _median_time(train_step, repeats, device)
    return {
        "score_batch_pairs": n,
        "score_sequence_length": int(batch["input_ids"].shape[1]),
        "score_train_step_s": round(step_s, 4),
        "score_train_pairs_per_s": round(n / step_s, 1),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
    }


def _untrained_upstream(cfg: Config, folder: Path, *, lora: bool = False) -> dict[str, Path]:
    """Save an untrained policy and two untrained score models where the PPO trainer expects artifacts.

    With ``lora``, RM-V / CM-V are LoRA adapters (rank ``model.lora.r``) on the policy, saved merged
    plus their adapter, as the shared-base mode needs.
    """
    import copy

    from saferlhfv.models.factory import apply_lora, load_vlm, save_vlm
    from saferlhfv.models.score import ScoreModel, save_score_model

    model, processor = load_vlm(cfg.model, _corpus(cfg), seed=cfg.seed)
    # an untrained model samples any token, the image placeholder included, which the rollout's forward
    # pass would then read as a second picture: forbid it (trained policies have learned not to emit it)
    image_token = getattr(processor, "image_token", None)
    if image_token is not None:
        model.generation_config.suppress_tokens = [processor.tokenizer.convert_tokens_to_ids(image_token)]
    save_vlm(model, processor, folder / "sft" / "model")
    for i, kind in enumerate(("reward", "cost")):
        backbone = apply_lora(copy.deepcopy(model), cfg.model.lora) if lora else model
        save_score_model(ScoreModel(backbone, seed=cfg.seed + i), processor, folder / kind / "model")
    return {f"{s}_dir": folder / s for s in ("sft", "reward", "cost")}


def bench_ppo(cfg: Config, *, iterations: int = 2, use_artifacts: bool = True) -> dict[str, Any]:
    """Time whole PPO-Lagrangian iterations (median over ``iterations`` after one warm-up): episodes/s.

    Uses the cached SFT / RM-V / CM-V artifacts of ``cfg`` when all three exist and ``use_artifacts``,
    otherwise untrained copies of the preset's model (every answer then runs to ``ppo.max_new_tokens``).
    """
    from saferlhfv.artifacts import RESULT
    from saferlhfv.train.ppo import make_trainer

    device = _device()
    dirs = {f"{s}_dir": artifact_dir(cfg, s) for s in ("sft", "reward", "cost")}
    trained = use_artifacts and all((d / RESULT).is_file() for d in dirs.values())
    run_cfg = apply_overrides(cfg, {"ppo.iterations": iterations + 1, "ppo.save_every": 0})
    with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
        tmp = Path(tmp)
        if not trained:
            dirs = _untrained_upstream(cfg, tmp)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_before = _rss_mb()
        trainer = make_trainer(run_cfg, **dirs, out_dir=tmp / "ppo")
        # GPU: tensor memory allocated for the six roles; CPU: the growth of the process's resident memory
        roles_mb = _peak_memory_mb(device) if device.type == "cuda" else _rss_mb() - rss_before
        records = []

        def step():
            records.append(trainer.step())

        step_s = _median_time(step, iterations, device)
    batch = cfg.ppo.rollout_batch_size
    length = statistics.mean(r["response_length"] for r in records)
    return {
        "ppo_upstream": "trained artifacts" if trained else "untrained models (answers run to max_new_tokens)",
        "ppo_rollout_batch": batch,
        "ppo_epochs": cfg.ppo.ppo_epochs,
        "ppo_mean_response_tokens": round(length, 1),
        "ppo_iteration_s": round(step_s, 3),
        "ppo_episodes_per_s": round(batch / step_s, 2),
        "ppo_rollout_tokens_per_s": round(batch * length / step_s, 1),
        "ppo_six_roles_built_memory_mb": round(roles_mb, 1),
        "ppo_six_roles_memory_kind": "CUDA allocated" if device.type == "cuda" else "resident memory growth (CPU)",
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
    }


def bench_methods(cfg: Config, *, iterations: int = 2) -> list[dict[str, Any]]:
    """:func:`bench_ppo` for the method of every PPO stage of the pipeline (PPO-Lagrangian, reward-only,
    RePO, safe GRPO, critic-free RePO), each with the overrides its stage uses: one row per method."""
    rows = []
    for stage, overrides in PPO_METHODS.items():
        r = bench_ppo(apply_overrides(cfg, overrides), iterations=iterations)
        rows.append({"stage": stage, "algorithm": overrides["ppo.algorithm"], **r})
    return rows


def _last_step(folder: Path) -> int | None:
    """The last optimiser step a trainer logged in ``folder/metrics.jsonl`` (for results without ``steps``)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None
    steps = [record.get("step") for record in read_metrics(path)]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _samples(cfg: Config, stage: str, result: dict[str, Any], folder: Path | None = None) -> tuple[int | None, str]:
    """Training samples a stage processed, and their unit."""
    if stage == "ppo":
        its = result.get("iterations")
        return (None if its is None else its * cfg.ppo.rollout_batch_size * cfg.ppo.ppo_epochs), "episodes"
    if stage == "guard":  # the trained guard at work: nothing trains
        return None, ""
    section = {
        "sft": cfg.sft,
        "reward": cfg.reward,
        "cost": cfg.cost,
        "guard_model": cfg.guard,
        "monitor": cfg.monitor,
    }[stage]
    steps = result.get("steps")
    if steps is None and folder is not None:
        steps = _last_step(folder)
    unit = {"sft": "sequences", "reward": "pairs", "cost": "pairs", "guard_model": "rows", "monitor": "answers"}[stage]
    return (None if steps is None else steps * section.batch_size * section.gradient_accumulation_steps), unit


def stage_times(cfg: Config, *, summary: str | Path | None = None, live: bool = True) -> list[dict[str, Any]]:
    """Wall time of each pipeline stage and its end-to-end training samples/s (nothing is trained here).

    Args:
        summary: a pipeline run's ``summary.json``: its stages' ``seconds`` are used where present.
        live: also time the two cheap stages that leave no artifact (``data``, ``smoke``) by running them.

    Returns:
        One row per stage: ``stage``, ``seconds`` (None if not trained), ``samples``, ``unit``,
        ``samples_per_s``, ``source`` (``measured now`` / ``artifact result.json`` / ``summary.json`` /
        ``missing``). The seconds of trained stages include their evaluation, so samples/s is a lower
        bound on the training loop's throughput (the ``model`` / ``score`` / ``ppo`` parts measure it).
    """
    from saferlhfv.artifacts import RESULT
    from saferlhfv.pipeline import STAGES

    rows: list[dict[str, Any]] = []
    done = json.loads(Path(summary).read_text()) if summary else {}
    if live:
        with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
            for name in ("data", "smoke"):
                if name not in STAGES:
                    continue
                start = time.perf_counter()
                STAGES[name](cfg, Path(tmp))
                seconds = time.perf_counter() - start
                rows.append({"stage": name, "seconds": round(seconds, 2), "samples": None, "unit": "",
                             "samples_per_s": None, "source": "measured now"})  # fmt: skip
    for name in PIPELINE:  # the trained entries of the stage table, in the pipeline's order
        entry, run_cfg = resolve(name, cfg)
        stage = entry.name
        folder = artifact_dir(run_cfg, stage)
        result = json.loads((folder / RESULT).read_text()) if (folder / RESULT).is_file() else None
        source = "artifact result.json" if result is not None else "missing"
        seconds = None if result is None else result.get("seconds")
        if name in done and isinstance(done[name], dict) and done[name].get("seconds") is not None:
            result = result or done[name]
            seconds, source = done[name]["seconds"], "summary.json"
        samples, unit = _samples(run_cfg, stage, result, folder) if result is not None else (None, "")
        rate = round(samples / seconds, 1) if samples and seconds else None
        rows.append({"stage": name, "seconds": seconds, "samples": samples, "unit": unit, "samples_per_s": rate,
                     "source": source})  # fmt: skip
    return rows
