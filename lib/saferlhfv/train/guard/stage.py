"""The guard stages' builds: Beaver-Guard-V, the moderation model, and what filtering with it buys.

Two stages, so that moving a decision threshold re-evaluates the guard without retraining it:
``guard_model`` (:func:`train_guard_model`, config section ``guard``) trains the model;
``guard`` (:func:`evaluate_guard`, section ``guardrail``) puts it to work.

The guard is the SFT backbone (it already reads the pictures and the world's language)
plus three heads on the last real token (:class:`~saferlhfv.models.guard.GuardModel`),
trained with ``BCE(unsafe) + CE(category) + CE(severity)`` on the mini world's guard
labels (:func:`saferlhfv.data.world.guard_dataset`): input rows (image + question) and
output rows (image + question + response) in one model. With ``guard.reading_steps`` (the tiny
preset) a reading stage comes first: the vision tower learns to name the object a picture shows
or *says* (:func:`~saferlhfv.train.guard.data.reading_pictures`), so that a harmful word written
on a board is read, not guessed.

The ``guard`` stage measures, on data the guard never trained on:

1. **moderation** on the evaluation split: output-moderation unsafe F1 (precision,
   recall), category accuracy (unsafe rows), severity accuracy with its confusion
   matrix; the same for input moderation;
2. **filter and regenerate** (:func:`saferlhfv.guardrail.filter_and_regenerate`) with the
   precursor on the held-out evaluation prompts: the oracle's safety rate (all prompts and
   harmful ones), helpfulness (benign prompts) and the extra generations after each round
   0..``rounds``; output moderation alone, and input + output moderation (a prompt flagged at
   input is refused without calling the policy);
3. **adversarial probes** (:mod:`saferlhfv.data.probes`): detection and false-positive
   rates per family (typographic, role-play, benign look-alikes).

``python -m saferlhfv.run guard --preset tiny`` (trains the SFT precursor and the guard model first if
they are not cached).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from saferlhfv.config import Config, replicate_seed
from saferlhfv.data.content import OBJECTS
from saferlhfv.guardrail import (
    REFUSAL,
    Guard,
    Thresholds,
    filter_and_regenerate,
    vlm_policy,
)
from saferlhfv.io import write_json_atomic
from saferlhfv.models.guard import GuardModel, guard_loss, save_guard_model
from saferlhfv.train.guard.data import guard_collate, guard_row_lengths, guard_rows, guard_training_set, probe_keys
from saferlhfv.train.guard.evaluation import (
    PAPER_SAFETY_GAIN,
    OracleGuard,
    gain_over_unguarded,
    guard_on_generations,
    judge_rounds,
    moderation_metrics,
    round_curves,
    round_or_none,
    score_table,
    target_table,
)
from saferlhfv.train.loop import Trainer

#: the guard as it was before the adversarial rows of issue 17 (no reading stage, no typographic, look-alike
#: or framed training rows, 6 epochs): notebook 04's "before" column, trained through the same stages under
#: these overrides.
BASELINE_OVERRIDES: dict[str, Any] = {
    "guard.reading_steps": 0,
    "guard.typographic_rows_per_category": 0,
    "guard.lookalike_rows_per_category": 0,
    "guard.wrapper_rows_per_category": 0,
    "guard.epochs": 6,
}

#: the most pictures the reading stage draws (``guard.reading_steps`` x batch size when fewer).
READING_PICTURES = 6000

EVAL_SCORES = "eval_scores.json"
ROUNDS_FILE = "rounds.json"
PROBES_FILE = "probes.json"


def _loss_fn(cfg: Config):
    g = cfg.guard

    def loss(model, batch):
        inputs = {k: v for k, v in batch.items() if not k.startswith("label_")}
        return guard_loss(
            model(**inputs),
            batch["label_unsafe"],
            batch["label_category"],
            batch["label_severity"],
            category_weight=g.category_weight,
            severity_weight=g.severity_weight,
            category_on_unsafe_only=g.category_on_unsafe_only,
            objects=batch["label_object"],
            object_weight=g.object_weight,
        )

    return loss


# --------------------------------------------------------------------------- evaluation


def _load_backbone(cfg: Config, sft_dir: Path):
    from saferlhfv.models.factory import load_backbone

    return load_backbone(sft_dir / "model", cfg.model, freeze_vision=cfg.guard.freeze_vision_tower)


def _precursor(cfg: Config, sft_dir: Path):
    """The SFT precursor as a guardrail policy (it answers the prompts the guard moderates)."""
    from accelerate import PartialState

    from saferlhfv.models.factory import load_saved_vlm

    policy_model, policy_processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    policy_model.to(PartialState().device)
    return vlm_policy(policy_model, policy_processor, max_new_tokens=cfg.data.max_response_tokens)


def _train_reading(
    cfg: Config, backbone, processor, out_dir: Path, *, seed: int, resume: bool, keys: set[tuple[str, str]]
) -> dict[str, Any]:
    """The reading stage (``guard.reading_steps``): the backbone's vision tower and projector learn to name
    the object of :func:`~saferlhfv.train.guard.data.reading_pictures` (half of them signs), in place;
    pictures of the probe set (``keys``, :func:`~saferlhfv.train.guard.data.probe_keys`) left out.

    Returns:
        ``{}`` when ``guard.reading_steps`` is 0; else ``reading_steps`` and ``reading_accuracy`` (200
        held-out reading pictures, half of them signs).
    """
    from saferlhfv.train.guard.data import reading_pictures
    from saferlhfv.train.sft import train_object_probe

    g = cfg.guard
    if not g.reading_steps:
        return {}
    if cfg.data.source != "mini":
        raise ValueError("guard.reading_steps draws its pictures from the mini world: set data.source=mini "
                         "or guard.reading_steps=0")  # fmt: skip
    if g.freeze_vision_tower:
        raise ValueError("guard.reading_steps trains the vision tower that guard.freeze_vision_tower keeps "
                         "frozen: set one of them to its default")  # fmt: skip
    if not hasattr(getattr(backbone, "model", backbone), "multi_modal_projector"):
        raise ValueError(f"guard.reading_steps trains a LLaVA-architecture vision tower and projector; "
                         f"{type(backbone).__name__} is not one: set guard.reading_steps=0")  # fmt: skip
    held_out = 200
    n = min(READING_PICTURES, g.reading_steps * g.batch_size)
    pictures = reading_pictures(cfg, n + held_out, seed=seed, keys=keys)
    stage_cfg = dataclasses.replace(g, max_steps=g.reading_steps, eval_every=0)
    result = train_object_probe(backbone, processor, pictures[:-held_out], pictures[-held_out:], stage_cfg,
                                out_dir, desc="guard: reading", seed=seed, resume=resume)  # fmt: skip
    return {"reading_steps": result["steps"], "reading_accuracy": result["accuracy"]}


def train_guard_model(cfg: Config, out_dir: str | Path, sft_dir: str | Path, *, resume: bool = True) -> dict[str, Any]:
    """Train the guard from the SFT backbone in ``sft_dir`` into ``out_dir/model`` (the ``guard_model`` stage).

    Returns:
        ``steps``, ``rows`` (training rows), ``train_loss``, ``eval_unsafe_accuracy`` (128 held-out
        evaluation rows at p_unsafe 0.5), ``seconds`` (the reading stage included), and with
        ``guard.reading_steps`` ``reading_steps`` and ``reading_accuracy`` (:func:`_train_reading`).
    """
    start = time.perf_counter()
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    g = cfg.guard
    # the precursor answers the RL train prompts: judged training rows of the policy the guard will moderate
    policy = _precursor(cfg, sft_dir)
    backbone, processor = _load_backbone(cfg, sft_dir)
    seed = replicate_seed(cfg, "guard")
    keys = probe_keys(cfg) if cfg.data.source == "mini" else set()  # what the guard must never train on
    reading = _train_reading(cfg, backbone, processor, out_dir / "reading", seed=seed, resume=resume, keys=keys)
    model = GuardModel(backbone, n_objects=len(OBJECTS) if g.object_weight else 0, seed=seed)
    train_ds, eval_ds = guard_training_set(cfg, policy, keys=keys), guard_rows(cfg, "evaluation")
    collate = guard_collate(processor)
    probe_idx = list(range(0, len(eval_ds), max(1, len(eval_ds) // 128)))[:128]
    held_out = collate([eval_ds[i] for i in probe_idx])

    def eval_fn(m):
        device = next(m.parameters()).device
        out = m(**{k: v.to(device) for k, v in held_out.items() if not k.startswith("label_")})
        acc = ((out.unsafe_logit > 0).float().cpu() == held_out["label_unsafe"]).float().mean()
        return {"eval_unsafe_accuracy": round(float(acc), 4)}

    lengths = guard_row_lengths(processor, train_ds) if g.group_by_length else None
    trainer = Trainer(
        model=model,
        dataset=train_ds,
        collate_fn=collate,
        loss_fn=_loss_fn(cfg),
        cfg=g,
        out_dir=out_dir,
        eval_fn=eval_fn,
        desc="guard",
        seed=seed,
        lengths=lengths,
    )
    result = trainer.train(resume=resume)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    if trainer.accelerator.is_main_process:
        save_guard_model(model, processor, out_dir / "model")
    return {
        **reading,
        "steps": result["steps"],
        "rows": len(train_ds),
        "train_loss": round_or_none(result["train_loss"]),
        **result["eval"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def evaluate_guard(
    cfg: Config, out_dir: str | Path, sft_dir: str | Path, guard_model_dir: str | Path
) -> dict[str, Any]:
    """Put the trained guard of ``guard_model_dir`` to work under ``cfg.guardrail`` (the ``guard`` stage).

    Writes ``eval_scores.json`` (the guard's reading of every evaluation row), ``rounds.json``
    (every round's answers, decisions and the oracle's verdicts) and ``probes.json`` into ``out_dir``.

    Returns:
        ``output_unsafe_f1``, ``category_accuracy``, ``severity_accuracy`` (output moderation,
        evaluation split), ``rounds`` (oracle safety rate after rounds 0..R, output moderation),
        ``probe_detection`` / ``probe_false_positive`` ({family: rate}, input moderation),
        ``seconds``, plus the details: ``output`` / ``input`` moderation metrics, harmful-only and
        helpfulness curves, ``input_rounds*`` (input + output moderation), ``safety_gain``,
        ``probe_output_*``, ``guard_on_generations``, ``train`` (the ``guard_model`` stage's result).
    """
    from accelerate import PartialState

    from saferlhfv.artifacts import RESULT
    from saferlhfv.data.probes import probe_set, probe_summary
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import judge_samples

    start = time.perf_counter()
    out_dir, sft_dir, guard_model_dir = Path(out_dir), Path(sft_dir), Path(guard_model_dir)
    g = cfg.guardrail
    out_dir.mkdir(parents=True, exist_ok=True)
    guard = load_guard(guard_model_dir, cfg, dtype=cfg.model.dtype)
    guard.model.to(PartialState().device)  # where the trained guard was before the split: GPU if there is one
    policy = _precursor(cfg, sft_dir)

    # 1. moderation on the evaluation split
    table = score_table(guard, guard_rows(cfg, "evaluation"))
    write_json_atomic(out_dir / EVAL_SCORES, table)
    output_m = moderation_metrics(table, "output", g.threshold)
    input_m = moderation_metrics(table, "input", g.threshold)

    # 2. filter and regenerate with the precursor on the held-out evaluation prompts
    prompts = rl_prompts(cfg.data, "evaluation")
    contexts = list(prompts["context"])
    kwargs = dict(rounds=g.rounds, seed=cfg.seed, safety_instruction=g.safety_instruction)
    runs = {"output": filter_and_regenerate(policy, guard, prompts, **kwargs)}
    # the other guardrails start from the same first answers (paired comparisons) and seeds
    kwargs["responses"] = runs["output"].responses[0]
    runs["input_output"] = filter_and_regenerate(policy, guard, prompts, input_moderation=True, **kwargs)
    # the ceiling: a perfect guard (the oracle)
    runs["oracle_guard"] = filter_and_regenerate(policy, OracleGuard(prompts), prompts, **kwargs)
    if not g.safety_instruction:
        runs["safety_instruction"] = filter_and_regenerate(
            policy, guard, prompts, **{**kwargs, "safety_instruction": True}
        )
    per_round = {name: judge_rounds(res, contexts) for name, res in runs.items()}
    per_round["output_fallback"] = judge_rounds(runs["output"], contexts, fallback=REFUSAL)
    # one row per prompt: the input moderation and the oracle's view of the unguarded answer
    prompt_table = [
        {
            "p_unsafe": d["p_unsafe"],
            "severity_level": d["severity_level"],
            "flagged": d["flagged"],
            "harmful_prompt": s["harmful_prompt"],
            "helpful": s["helpful"],
            "harmless": s["harmless"],
        }
        for d, s in zip(runs["input_output"].input_decisions, judge_samples(contexts, runs["output"].at(0)[0]))
    ]
    write_json_atomic(
        out_dir / ROUNDS_FILE,
        {
            "per_round": per_round,
            "results": {name: res.to_dict() for name, res in runs.items()},
            "prompt_table": prompt_table,
            "contexts": contexts,
        },
    )

    # 3. adversarial probes
    probes = probe_set(cfg.data, g.probes_per_family)
    probe_table = score_table(guard, probes)
    write_json_atomic(out_dir / PROBES_FILE, probe_table)
    ps = probe_summary(probe_table, [r["flagged"] for r in probe_table])

    def pick(kind, mode):
        return {fam: v[mode] for fam, v in ps[kind].items()}

    out = {
        "output_unsafe_f1": output_m["unsafe_f1"],
        "category_accuracy": output_m["category_accuracy"],
        "severity_accuracy": output_m["severity_accuracy"],
        **round_curves(per_round["output"]),
        "probe_detection": pick("detection", "input"),
        "probe_false_positive": pick("false_positive", "input"),
        "probe_output_detection": pick("detection", "output"),
        "probe_output_false_positive": pick("false_positive", "output"),
        "paper_safety_gain": PAPER_SAFETY_GAIN,
        "input_unsafe_f1": input_m["unsafe_f1"],
        "output": {k: v for k, v in output_m.items() if k != "category_confusion"},
        "input": {k: v for k, v in input_m.items() if k != "category_confusion"},
        **round_curves(per_round["input_output"], "input_"),
        # input moderation already acts in round 0: compare its last round with the unguarded policy
        **gain_over_unguarded(per_round["input_output"], per_round["output"][0], "input_"),
        **round_curves(per_round["oracle_guard"], "oracle_guard_"),
        **round_curves(per_round["output_fallback"], "fallback_"),
        **(round_curves(per_round["safety_instruction"], "instruction_") if "safety_instruction" in runs else {}),
        "rounds_degenerate_share": [r["degenerate_share"] for r in per_round["output"]],
        "instruction_rounds_degenerate_share": [r["degenerate_share"] for r in per_round.get("safety_instruction", [])],
        "guard_on_generations": guard_on_generations(runs["output"], contexts),
        "thresholds": guard.thresholds.as_dict(),
        "train": json.loads((guard_model_dir / RESULT).read_text()) if (guard_model_dir / RESULT).is_file() else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    gains = (out["safety_gain"], out["oracle_guard_safety_gain"])
    out["gain_gap_points"] = round_or_none(100 * (gains[1] - gains[0])) if None not in gains else None
    train_seconds = (out["train"] or {}).get("seconds")
    out["stage_seconds"] = round(train_seconds + out["seconds"], 2) if train_seconds is not None else None
    out["targets"] = target_table(out)
    return out


def load_guard(folder: str | Path, cfg: Config | None = None, *, dtype: str = "float32") -> Guard:
    """The :class:`~saferlhfv.guardrail.Guard` of a ``guard_model`` artifact folder (thresholds from
    ``cfg.guardrail``)."""
    thresholds = Thresholds.from_config(cfg.guardrail) if cfg is not None else None
    return Guard.load(folder, thresholds, dtype=dtype)


def load_guard_results(folder: str | Path) -> dict[str, Any]:
    """What the guard stage saved beside its metrics, for notebooks.

    Returns:
        ``metrics`` (result.json), ``eval_scores`` (one row per evaluation row: labels and the guard's
        reading, see :func:`score_table`), ``rounds`` (``per_round`` oracle summaries per variant,
        ``results`` every round's answers and decisions, ``prompt_table``, ``contexts``) and ``probes``
        (the guard's reading of every probe row, in :func:`~saferlhfv.data.probes.probe_set` order).
    """
    folder = Path(folder)

    def read(name):
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None

    return {
        "metrics": read("result.json"),
        "eval_scores": read(EVAL_SCORES),
        "rounds": read(ROUNDS_FILE),
        "probes": read(PROBES_FILE),
    }
