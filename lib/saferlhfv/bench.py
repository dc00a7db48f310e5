"""Speed and memory of a preset: ``python -m saferlhfv.bench --preset tiny [--json]``.

Six parts (``--parts``; all by default), each a function returning a dict:

* ``model`` (:func:`bench_model`): the policy VLM's parameter count; one SFT optimiser step
  (forward + backward + AdamW) on ``--batch-size`` image + question + response sequences ->
  SFT training samples/s; sampling exactly ``--new-tokens`` tokens for ``--batch-size`` prompts
  with the KV cache -> generation tokens/s. Medians over ``--repeats`` after one warm-up.
* ``score`` (:func:`bench_score_model`): one RM-V / CM-V optimiser step on ``--batch-size``
  preference pairs (2 x batch sequences through a VLM + scalar head) -> pairs/s. RM-V and CM-V
  have the same architecture and cost per step (CM-V's sign term is free).
* ``ppo`` (:func:`bench_ppo`): whole PPO-Lagrangian iterations (rollout with the KV cache,
  scoring by four score models, reference log-probs, GAE, the multiplier, PPO epochs) of
  :func:`~saferlhfv.train.ppo.make_trainer` -> episodes/s. It uses the preset's trained
  SFT / RM-V / CM-V artifacts when they are cached, untrained copies otherwise (then every
  answer runs to ``ppo.max_new_tokens``: a worst case).
* ``methods`` (:func:`bench_methods`): the ``ppo`` part for the method of each PPO stage of the
  pipeline (PPO-Lagrangian, reward-only, RePO, four-role safe GRPO with its 4 answers per prompt).
* ``stages`` (:func:`stage_times`): wall time of each pipeline stage and its end-to-end
  training samples/s (steps x batch / seconds, evaluation included), read from the cached
  artifacts' ``result.json`` (``seconds``) or from a pipeline run's ``summary.json``; a stage
  not trained yet is listed as missing (nothing is trained here).
* ``memory`` (:func:`role_memory`): the memory of PPO's six roles (actor, reference, RM-V, CM-V,
  reward critic, cost critic) in the trainer's three layouts (:data:`MEMORY_LAYOUTS`): six
  separate fully trained models; six models whose actor and critics train LoRA adapters; the
  shared base (one frozen model, five adapters of rank ``model.lora.r``, four heads; the
  reference = adapters off). Each layout builds the real trainer and runs one iteration in its
  own process: distinct weight storage, gradient + AdamW bytes, and peak memory are measured.

Peak memory is the process's peak resident memory (CPU) or peak allocated CUDA memory (GPU).
Timings are wall-clock on a possibly shared machine: compare medians, not single runs. The same
code measures the small preset on a GPU (it needs the pretrained weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config, add_config_arguments, apply_overrides, config_from_args
from saferlhfv.io import read_metrics
from saferlhfv.stages import PIPELINE, PPO_METHODS, artifact_dir, resolve

__all__ = [
    "PARTS",
    "bench_model",
    "bench_score_model",
    "bench_ppo",
    "bench_methods",
    "stage_times",
    "role_memory",
    "run_bench",
    "format_report",
    "main",
]

PARTS = ("model", "score", "ppo", "methods", "stages", "memory")


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
    from saferlhfv.models.generation import encode_prompts

    device = _device()
    model, processor = load_vlm(cfg.model, _corpus(cfg))
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
        model.generate(**gen_batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)

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
    from saferlhfv.algorithms.losses import reward_loss
    from saferlhfv.data import load_preference_data
    from saferlhfv.models.collate import pair_batch
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.score import ScoreModel
    from saferlhfv.train.preference import pair_view

    device = _device()
    backbone, processor = load_vlm(cfg.model, _corpus(cfg))
    model = ScoreModel(backbone, seed=cfg.seed).to(device).train()
    pairs = load_preference_data(cfg.data, "train")
    views = [pair_view(pairs[i], "reward") for i in range(min(batch_size, len(pairs)))]
    batch = pair_batch(
        processor, [v["image"] for v in views], [v["question"] for v in views], [v["a"] for v in views],
        [v["b"] for v in views],
    ).to(device)  # fmt: skip
    n = len(views)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        end = model(**batch).end_scores
        loss, _ = reward_loss(end[:n], end[n:], reg=cfg.reward.reg)
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

    model, processor = load_vlm(cfg.model, _corpus(cfg))
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
    RePO, safe GRPO), each with the overrides its stage uses: one row per method."""
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
    section = {"sft": cfg.sft, "reward": cfg.reward, "cost": cfg.cost, "guard": cfg.guard}[stage]
    steps = result.get("steps")
    if steps is None and folder is not None:
        steps = _last_step(folder)
    unit = {"sft": "sequences", "reward": "pairs", "cost": "pairs", "guard": "rows"}[stage]
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


#: the three ways the PPO trainer can hold its six roles, as (name, config overrides).
_GRPO = {"ppo.algorithm": "grpo_lag", "ppo.samples_per_prompt": 2}
MEMORY_LAYOUTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("six separate models", {"model.lora.enabled": False, "ppo.shared_base": False}),
    ("six models, LoRA actor + critics", {"model.lora.enabled": True, "ppo.shared_base": False}),
    ("shared base + 5 LoRA adapters", {"model.lora.enabled": True, "ppo.shared_base": True}),
    ("safe GRPO: four separate models", {"model.lora.enabled": False, "ppo.shared_base": False, **_GRPO}),
    ("safe GRPO: shared base + 3 adapters", {"model.lora.enabled": True, "ppo.shared_base": True, **_GRPO}),
)


def _tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (a weight shared by several roles counts once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def measure_layout(cfg: Config, upstream: dict[str, Path], *, iterations: int = 1) -> dict[str, Any]:
    """Build :func:`~saferlhfv.train.ppo.make_trainer` as ``cfg`` says, run ``iterations``, measure memory.

    Run it in a fresh process (as :func:`role_memory` does) for a clean peak.

    Returns:
        ``weights_mb``: distinct parameter + buffer storage of the six roles; ``train_state_mb``:
        the gradients (one per trainable weight, held during each update) plus the AdamW moments
        found in the optimisers after the iterations; ``trainable_parameters``; ``peak_mb``: the
        peak CUDA memory allocated (GPU) or the growth of the process's peak resident memory over
        its resident memory before building (CPU), through building and the iterations.
    """
    from saferlhfv.train.ppo import make_trainer

    device = _device()
    run_cfg = apply_overrides(cfg, {"ppo.iterations": iterations, "ppo.save_every": 0})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
        trainer = make_trainer(run_cfg, **upstream, out_dir=tmp)
        for _ in range(iterations):
            trainer.step()
        peak = _peak_memory_mb(device) - before
    r = trainer.roles
    roles = r.models()
    weights = _tensor_bytes(t for m in roles for t in list(m.parameters()) + list(m.buffers()))
    trainable = [p for params in r.params.values() for p in params]
    opts = [opt for opt in (r.opt_actor, r.opt_reward_critic, r.opt_cost_critic) if opt is not None]
    moments = [v for opt in opts for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v) and v.dim() > 0]  # fmt: skip
    mb = 2**20
    return {
        "weights_mb": round(weights / mb, 2),
        "train_state_mb": round((_tensor_bytes(trainable) + _tensor_bytes(moments)) / mb, 2),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "peak_mb": round(peak, 1),
    }


def role_memory(cfg: Config, *, iterations: int = 1) -> dict[str, Any]:
    """Memory of PPO's six roles in each of :data:`MEMORY_LAYOUTS`, measured on the real trainer.

    The upstream models are untrained copies of the preset's policy, with RM-V / CM-V saved as LoRA
    adapters of rank ``model.lora.r`` (and merged, for the layouts that load whole models). Each
    layout runs :func:`measure_layout` in a fresh Python process, so one layout's peak does not hide
    another's.

    Returns:
        ``layouts``: one row per layout (``layout`` + the fields of :func:`measure_layout`);
        ``lora_rank``; ``separate_over_shared``: weights of six separate models / shared base;
        ``grpo_over_ppo_train_state``: gradient + AdamW bytes of four-role GRPO / six-role PPO (separate models).
    """
    import os
    import subprocess

    with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
        tmp = Path(tmp)
        upstream = _untrained_upstream(cfg, tmp / "upstream", lora=True)
        rows = []
        for name, overrides in MEMORY_LAYOUTS:
            cfg_file = tmp / "config.yaml"
            apply_overrides(cfg, overrides).save(cfg_file)
            code = (
                "import json, sys; from pathlib import Path; from saferlhfv.config import load_config; "
                "from saferlhfv.bench import measure_layout; "
                f"up = {{k: Path(v) for k, v in {json.dumps({k: str(v) for k, v in upstream.items()})}.items()}}; "
                f"print('MEASURED ' + json.dumps(measure_layout(load_config({str(cfg_file)!r}), up, "
                f"iterations={iterations})))"
            )
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=False
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"measuring '{name}' failed: {proc.stderr.strip().splitlines()[-1:]}")
            rows.append({"layout": name, **json.loads(lines[-1][len("MEASURED ") :])})
    return {
        "layouts": rows,
        "lora_rank": cfg.model.lora.r,
        "iterations": iterations,
        "peak_kind": "CUDA allocated" if _device().type == "cuda" else "peak resident memory growth (CPU)",
        "separate_over_shared": round(rows[0]["weights_mb"] / rows[2]["weights_mb"], 2),
        "grpo_over_ppo_train_state": round(rows[3]["train_state_mb"] / rows[0]["train_state_mb"], 3),
    }


def run_bench(
    cfg: Config,
    parts: tuple[str, ...] = PARTS,
    *,
    batch_size: int = 8,
    new_tokens: int = 32,
    repeats: int = 5,
    ppo_iterations: int = 2,
    summary: str | Path | None = None,
    live_stages: bool = True,
) -> dict[str, Any]:
    """Run the chosen ``parts`` (see the module docstring); a part that fails reports its error instead."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {unknown}; choose from {PARTS}")
    device = _device()
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    calls = {
        "model": lambda: bench_model(cfg, batch_size=batch_size, new_tokens=new_tokens, repeats=repeats),
        "score": lambda: bench_score_model(cfg, batch_size=batch_size, repeats=repeats),
        "ppo": lambda: bench_ppo(cfg, iterations=ppo_iterations),
        "methods": lambda: bench_methods(cfg, iterations=ppo_iterations),
        "stages": lambda: stage_times(cfg, summary=summary, live=live_stages),
        "memory": lambda: role_memory(cfg),
    }
    for part in parts:
        start = time.perf_counter()
        try:
            out[part] = calls[part]()
        except Exception as err:  # one part failing (e.g. weights not downloadable) keeps the others
            out[part] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        if isinstance(out[part], dict):
            out[part]["bench_seconds"] = round(time.perf_counter() - start, 1)
    out["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_report(result: dict[str, Any]) -> str:
    """The human-readable table ``python -m saferlhfv.bench`` prints."""
    lines = [f"saferlhfv bench: preset {result['preset']} on {result['device']} ({result['threads']} threads)"]
    model, score, ppo = result.get("model", {}), result.get("score", {}), result.get("ppo", {})
    if any(k in result for k in ("model", "score", "ppo")):
        lines += ["", "throughput (measured)", f"{'what':<34} {'value':>12}  unit"]
        rows = [
            ("policy parameters", model.get("parameters"), ""),
            ("SFT train step", model.get("train_samples_per_s"), f"sequences/s (batch {model.get('batch_size')})"),
            ("RM-V / CM-V train step", score.get("score_train_pairs_per_s"), "pairs/s"),
            ("PPO-Lagrangian iteration", ppo.get("ppo_episodes_per_s"), f"episodes/s ({ppo.get('ppo_upstream')})"),
            ("PPO rollout generation", ppo.get("ppo_rollout_tokens_per_s"), "tokens/s (whole iteration)"),
            ("generation, KV cache", model.get("generate_tokens_per_s"), f"tokens/s ({model.get('new_tokens')} new)"),
            (
                "six PPO roles built",
                ppo.get("ppo_six_roles_built_memory_mb"),
                f"MB ({ppo.get('ppo_six_roles_memory_kind')})",
            ),
        ]
        lines += [f"{a:<34} {_fmt(b):>12}  {c}" for a, b, c in rows if b is not None]
        for name, part in (("model", model), ("score", score), ("ppo", ppo)):
            if "error" in part:
                lines.append(f"{name}: {part['error']}")
    if "methods" in result:
        methods = result["methods"]
        header = f"{'stage':<16} {'episodes/s':>11} {'iteration s':>12} {'rollout batch':>14}"
        lines += ["", "PPO methods, whole iterations (their memory: the memory part)", header]
        if isinstance(methods, dict):
            lines.append(f"error: {methods.get('error')}")
        else:
            for r in methods:
                lines.append(
                    f"{r['stage']:<16} {_fmt(r['ppo_episodes_per_s']):>11} {_fmt(r['ppo_iteration_s']):>12} "
                    f"{_fmt(r['ppo_rollout_batch']):>14}"
                )
    if "stages" in result:
        stages = result["stages"]
        lines += ["", "pipeline stages", f"{'stage':<16} {'seconds':>9} {'samples':>9}  {'samples/s':>9}  source"]
        if isinstance(stages, dict):
            lines.append(f"error: {stages.get('error')}")
        else:
            for r in stages:
                per = f"{_fmt(r['samples_per_s'])} {r['unit']}" if r["samples_per_s"] else "-"
                lines.append(
                    f"{r['stage']:<16} {_fmt(r['seconds']):>9} {_fmt(r['samples']):>9}  {per:>9}  {r['source']}"
                )
            lines.append("(trained stages' seconds include their evaluation)")
    if "memory" in result:
        m = result["memory"]
        lines += ["", "memory of PPO's six roles (measured: build + one iteration, each layout in its own process)"]
        if "error" in m:
            lines.append(f"error: {m['error']}")
        else:
            lines.append(f"{'layout':<34} {'weights MB':>11} {'grad+AdamW MB':>14} {'peak MB':>9} {'trainable':>11}")
            for r in m["layouts"]:
                lines.append(
                    f"{r['layout']:<34} {r['weights_mb']:>11,.2f} {r['train_state_mb']:>14,.2f} "
                    f"{r['peak_mb']:>9,.1f} {_fmt(r['trainable_parameters']):>11}"
                )
            lines.append(
                f"(LoRA rank {m['lora_rank']}; peak = {m['peak_kind']}; six separate models hold "
                f"{m['separate_over_shared']:g}x the shared base's weights; four-role GRPO holds "
                f"{m['grpo_over_ppo_train_state']:g}x six-role PPO's gradient + AdamW state)"
            )
    lines += ["", f"peak memory of this process: {_fmt(result.get('peak_memory_mb'))} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppo-iterations", type=int, default=2, help="timed PPO iterations after one warm-up")
    parser.add_argument("--summary", help="a pipeline run's summary.json for the stage wall times")
    parser.add_argument("--no-live-stages", action="store_true", help="do not time the data and smoke stages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    cfg: Config = config_from_args(args)
    result = run_bench(
        cfg,
        tuple(args.parts),
        batch_size=args.batch_size,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        ppo_iterations=args.ppo_iterations,
        summary=args.summary,
        live_stages=not args.no_live_stages,
    )
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
