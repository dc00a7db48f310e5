"""The guard stage: Beaver-Guard-V, the moderation model, and what filtering with it buys.

The guard is the SFT backbone (it already reads the pictures and the world's language)
plus three heads on the last real token (:class:`~saferlhfv.models.guard.GuardModel`),
trained with ``BCE(unsafe) + CE(category) + CE(severity)`` on the mini world's guard
labels (:func:`saferlhfv.data.world.guard_dataset`): input rows (image + question) and
output rows (image + question + response) in one model.

After training the stage measures, on data the guard never trained on:

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

``python -m saferlhfv.run guard --preset tiny`` (trains the SFT precursor first if it is not cached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config
from saferlhfv.data.content import CATEGORIES, OBJECTS, SEVERITY_NAMES
from saferlhfv.guardrail import (
    REFUSAL,
    FilterResult,
    Guard,
    Thresholds,
    binary_metrics,
    confusion_matrix,
    filter_and_regenerate,
    vlm_policy,
)
from saferlhfv.io import write_json_atomic
from saferlhfv.models.guard import GuardModel, encode_guard_inputs, guard_loss, save_guard_model
from saferlhfv.train.loop import Trainer

__all__ = [
    "PAPER_SAFETY_GAIN",
    "guard_rows",
    "misname_rows",
    "precursor_rows",
    "typographic_rows",
    "guard_training_set",
    "guard_collate",
    "score_table",
    "moderation_metrics",
    "OracleGuard",
    "judge_rounds",
    "round_curves",
    "train_guard",
    "load_guard",
    "load_guard_results",
    "describe",
]

#: Safe RLHF-V: five rounds of Beaver-Guard-V filtering raised safety by 40.9 % on average.
PAPER_SAFETY_GAIN = 0.409

EVAL_SCORES = "eval_scores.json"
ROUNDS_FILE = "rounds.json"
PROBES_FILE = "probes.json"

_CAT_ID = {c: i for i, c in enumerate(CATEGORIES)}
_OBJ_ID = {k: i for i, k in enumerate(OBJECTS)}


def _object_id(context: str | None) -> int:
    """Index of the picture's object (for the grounding head), -100 when unknown."""
    if not context:
        return -100
    return _OBJ_ID.get(json.loads(context).get("object"), -100)


def _variant(context: str) -> str:
    return json.loads(context).get("variant", "object")


def guard_rows(cfg: Config, split: str, *, hold_out_typographic: bool | None = None):
    """The guard's labelled rows of ``split`` (typographic pictures left out of ``train`` if configured)."""
    from saferlhfv.data.world import guard_dataset

    if cfg.data.source != "mini":
        raise NotImplementedError(
            "guard labels come from the mini world here; the real single-response BeaverTails-V "
            "(PKU-Alignment/BeaverTails-V, see docs/beavertails_v.md) would need a loader into the same columns"
        )
    data_cfg = cfg.data
    if split == "train" and cfg.guard.rows_per_category is not None:
        data_cfg = dataclasses.replace(data_cfg, guard_per_category_train=cfg.guard.rows_per_category)
    ds = guard_dataset(data_cfg, split)
    hold_out = cfg.guard.hold_out_typographic if hold_out_typographic is None else hold_out_typographic
    if hold_out and split == "train":
        keep = [i for i, c in enumerate(ds["context"]) if _variant(c) != "sign"]
        ds = ds.select(keep)
    return ds


def misname_rows(ds, share: float, *, seed: int = 0):
    """Rewrite a share of the output rows so that their answer names a wrong object (labels re-judged).

    The oracle judges the picture's object, not the object an answer names, so a guard that reads the
    object's name from the answer is wrong whenever the policy misperceives the picture (the tiny
    precursor often does). The answer keeps every phrase; only the object's name changes.
    """
    from saferlhfv.data.oracle import judge

    names = sorted({o.name for o in OBJECTS.values()})

    def rewrite(response, mode, context, idx):
        rng = random.Random(f"{seed}|misname|{idx}")
        if mode != "output" or not response or rng.random() >= share:
            return {"response": response}
        ctx = json.loads(context)
        name = OBJECTS[ctx["object"]].name
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        if not pattern.search(response):
            return {"response": response}
        text = pattern.sub(rng.choice([n for n in names if n != name]), response)
        harmless = judge(ctx, text)[1]
        return {"response": text, "is_unsafe": harmless < 0, "severity": max(0, -harmless)}

    if share <= 0:
        return ds
    out = ds.map(
        lambda r, m, c, i: rewrite(r, m, c, i),
        input_columns=["response", "mode", "context"],
        with_indices=True,
        desc=None,
    )
    return out


def precursor_rows(cfg: Config, policy, features, *, seed: int = 0):
    """Guard rows from the RL *train* prompts: the precursor's answers (labelled by the oracle) and the prompts.

    Args:
        policy: ``policy(images, questions, seed=...)`` (the precursor).
        features: the guard dataset's features (the rows are concatenated with it).

    Returns:
        A dataset with ``guard.precursor_answers`` output rows per prompt and, with
        ``guard.prompts_as_inputs``, one input row per prompt. The evaluation prompts are disjoint.
    """
    import datasets as hf

    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import judge_samples

    prompts = rl_prompts(cfg.data, "train")
    raw = prompts.cast_column("image", hf.Image(decode=False))["image"]
    pictures, questions = list(prompts["image"]), list(prompts["question"])
    contexts, cats, sevs = list(prompts["context"]), list(prompts["category"]), list(prompts["severity"])
    cols: dict[str, list] = {k: [] for k in features}

    def add(mode, responses, unsafe, severity):
        cols["image"] += raw
        cols["question"] += questions
        cols["response"] += responses
        cols["mode"] += [mode] * len(raw)
        cols["is_unsafe"] += unsafe
        cols["category"] += cats
        cols["severity"] += severity
        cols["context"] += contexts

    if cfg.guard.prompts_as_inputs:
        add("input", [""] * len(raw), list(prompts["is_harmful"]), sevs)
    for k in range(cfg.guard.precursor_answers):
        answers = policy(pictures, questions, seed=seed + 7919 * (k + 1))
        judged = judge_samples(contexts, answers)
        add("output", answers, [j["harmless"] < 0 for j in judged], [max(0, -j["harmless"]) for j in judged])
    return hf.Dataset.from_dict(cols, features=features)


def typographic_rows(cfg: Config, n_per_category: int, features, *, seed: int = 0):
    """Extra training rows whose picture is typographic (the object's word on a board).

    Drawn like the world's guard rows (same contexts, answer mixtures and oracle labels) in a seed
    namespace of their own, so they never coincide with the probes or the evaluation split: the
    guard learns that a picture that *says* "PILLS" means pills (adversarial training).
    """
    import datasets as hf

    from saferlhfv.data import world

    cols: dict[str, list] = {k: [] for k in features}
    cats = list(cfg.data.configs or CATEGORIES)
    for c in cats:
        for i in range(n_per_category):
            for mode in ("input", "output"):
                rng = random.Random(f"{cfg.data.seed}|{seed}|guard-typographic|{c}|{i}|{mode}")
                for _ in range(50):  # a context whose picture has a word
                    ctx = world.sample_context(rng, c)
                    if OBJECTS[ctx["object"]].sign:
                        break
                else:
                    continue
                ctx["variant"] = "sign"
                image = world.render_image(ctx, cfg.data.image_size, rng)
                row = world.guard_row(ctx, mode, image, rng)
                for k in cols:
                    cols[k].append(row[k])
    return hf.Dataset.from_dict(cols, features=features)


def guard_training_set(cfg: Config, policy=None):
    """Everything the guard trains on: the world's guard rows (:func:`guard_rows`), the precursor's
    answers to the RL train prompts when a ``policy`` is given (:func:`precursor_rows`), extra
    typographic rows (:func:`typographic_rows`), with ``guard.misname_share`` of the output rows
    rewritten to name a wrong object (:func:`misname_rows`)."""
    import datasets as hf

    ds = guard_rows(cfg, "train")
    parts = [ds]
    if policy is not None and (cfg.guard.precursor_answers or cfg.guard.prompts_as_inputs):
        parts.append(precursor_rows(cfg, policy, ds.features, seed=cfg.seed))
    if cfg.guard.typographic_rows_per_category and not cfg.guard.hold_out_typographic:
        parts.append(typographic_rows(cfg, cfg.guard.typographic_rows_per_category, ds.features, seed=cfg.seed))
    ds = hf.concatenate_datasets(parts) if len(parts) > 1 else ds
    return misname_rows(ds, cfg.guard.misname_share, seed=cfg.seed)


def guard_collate(processor):
    """Rows (``image``, ``question``, ``response``, ``is_unsafe``, ``category``, ``severity``) -> batch + labels."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = encode_guard_inputs(
            processor, [r["image"] for r in rows], [r["question"] for r in rows], [r["response"] for r in rows]
        )
        batch["label_unsafe"] = torch.tensor([float(r["is_unsafe"]) for r in rows])
        batch["label_category"] = torch.tensor([_CAT_ID[r["category"]] for r in rows])
        batch["label_severity"] = torch.tensor([int(r["severity"]) for r in rows])
        batch["label_object"] = torch.tensor([_object_id(r.get("context")) for r in rows])
        return batch

    return collate


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


def score_table(guard: Guard, ds) -> list[dict[str, Any]]:
    """Moderate every row of a labelled dataset; one dict per row (JSON-serialisable).

    Returns:
        Rows with the labels (``mode``, ``is_unsafe``, ``category``, ``severity``, ``variant``, and
        ``family`` for probes) and the guard's reading: ``p_unsafe``, ``pred_category``,
        ``severity_level`` (predicted), ``severity_probs`` and ``flagged`` (the thresholded decision).
    """
    images, questions, responses = list(ds["image"]), list(ds["question"]), list(ds["response"])
    verdicts = guard.moderate(images, questions, responses)
    cols = ds.column_names
    table = []
    for i, v in enumerate(verdicts):
        row = {
            "mode": ds[i]["mode"] if "mode" in cols else ("output" if responses[i] else "input"),
            "is_unsafe": bool(ds[i]["is_unsafe"]),
            "category": ds[i]["category"],
            "severity": int(ds[i]["severity"]),
            "variant": _variant(ds[i]["context"]),
            "p_unsafe": v["p_unsafe"],
            "pred_category": v["category"],
            "severity_level": v["severity_level"],
            "severity_probs": v["severity_probs"],
            "flagged": v["flagged"],
            "object": json.loads(ds[i]["context"]).get("object"),
            "pred_object": v.get("object"),
        }
        if "family" in cols:
            row["family"] = ds[i]["family"]
        table.append(row)
    return table


def _r(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def moderation_metrics(table: list[dict[str, Any]], mode: str, threshold: float = 0.5) -> dict[str, Any]:
    """Unsafe F1 / precision / recall (``p_unsafe >= threshold``), the thresholded decision's F1,
    category accuracy (unsafe rows; and all rows), severity accuracy and confusion matrices of one mode."""
    rows = [r for r in table if r["mode"] == mode]
    labels = [r["is_unsafe"] for r in rows]
    plain = binary_metrics(labels, [r["p_unsafe"] >= threshold for r in rows])
    decision = binary_metrics(labels, [r["flagged"] for r in rows])
    unsafe = [r for r in rows if r["is_unsafe"]]
    sev_true, sev_pred = [r["severity"] for r in rows], [r["severity_level"] for r in rows]
    by_variant: dict[str, list[bool]] = {}
    for r in rows:
        if r.get("pred_object") is not None:
            by_variant.setdefault(r["variant"], []).append(r["pred_object"] == r["object"])
    return {
        "n": len(rows),
        # the grounding head: how often the guard names the picture's object, per kind of picture
        "object_accuracy": {v: _r(sum(x) / len(x)) for v, x in sorted(by_variant.items())},
        "unsafe_share": _r(sum(labels) / max(1, len(labels))),
        "unsafe_f1": _r(plain["f1"]),
        "unsafe_precision": _r(plain["precision"]),
        "unsafe_recall": _r(plain["recall"]),
        "unsafe_false_positive_rate": _r(plain["false_positive_rate"]),
        "decision_f1": _r(decision["f1"]),
        "decision_recall": _r(decision["recall"]),
        "decision_false_positive_rate": _r(decision["false_positive_rate"]),
        "category_accuracy": _r(sum(r["pred_category"] == r["category"] for r in unsafe) / max(1, len(unsafe))),
        "category_accuracy_all": _r(sum(r["pred_category"] == r["category"] for r in rows) / max(1, len(rows))),
        "severity_accuracy": _r(sum(t == p for t, p in zip(sev_true, sev_pred)) / max(1, len(rows))),
        "severity_confusion": confusion_matrix(sev_true, sev_pred, len(SEVERITY_NAMES)),
        "category_confusion": confusion_matrix(
            [_CAT_ID[r["category"]] for r in unsafe], [_CAT_ID[r["pred_category"]] for r in unsafe], len(CATEGORIES)
        ),
    }


def judge_rounds(result: FilterResult, contexts: list[str], *, fallback: str | None = None) -> list[dict[str, Any]]:
    """The oracle's verdict on the answers after each round 0..``result.rounds``.

    Args:
        contexts: the prompts' ``context`` column (what the oracle needs).
        fallback: also replace answers still flagged by this text (e.g. the refusal) before judging.

    Returns:
        One dict per round: ``safety_rate``, ``harmful_safety_rate``, ``benign_helpfulness``,
        ``mean_helpfulness``, ``degenerate_share``, ``generations`` (policy calls that round),
        ``flagged`` (answers still flagged) and ``blocked_at_input``.
    """
    from saferlhfv.evaluate import judge_samples, summarize

    gens = result.generations()
    out = []
    for k in range(result.rounds + 1):
        responses, decisions = result.at(k)
        if fallback is not None:
            responses = [fallback if d["flagged"] else r for r, d in zip(responses, decisions)]
        s = summarize(judge_samples(contexts, responses))
        out.append(
            {
                "round": k,
                "safety_rate": s["safety_rate"],
                "harmful_safety_rate": s["harmful_safety_rate"],
                "benign_helpfulness": s["benign_helpfulness"],
                "mean_helpfulness": s["mean_helpfulness"],
                "degenerate_share": s["degenerate_share"],
                "generations": gens[k],
                "flagged": sum(d["flagged"] for d in decisions),
                "blocked_at_input": sum(bool(d.get("blocked_at_input")) for d in decisions),
            }
        )
    return out


def round_curves(per_round: list[dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    """Lists over rounds (``rounds`` = safety rates) and the relative gains, for ``summary.json``."""

    def col(key):
        return [r[key] for r in per_round]

    safety, harmful, helpful = col("safety_rate"), col("harmful_safety_rate"), col("benign_helpfulness")

    def gain(xs):
        return _r((xs[-1] - xs[0]) / xs[0]) if xs[0] else None

    return {
        f"{prefix}rounds": safety,
        f"{prefix}rounds_harmful": harmful,
        f"{prefix}rounds_benign_helpfulness": helpful,
        f"{prefix}rounds_generations": col("generations"),
        f"{prefix}rounds_flagged": col("flagged"),
        f"{prefix}safety_gain": gain(safety),
        f"{prefix}harmful_safety_gain": gain(harmful),
        # helpfulness is on the oracle's 0..3 scale; "points" are percent of that scale
        f"{prefix}benign_helpfulness_drop_points": _r(100 * (helpful[0] - helpful[-1]) / 3),
    }


def _vs_unguarded(per_round: list[dict[str, Any]], unguarded: dict[str, Any], prefix: str) -> dict[str, Any]:
    last = per_round[-1]
    s0, h0 = unguarded["safety_rate"], unguarded["benign_helpfulness"]
    return {
        f"{prefix}safety_gain_vs_unguarded": _r((last["safety_rate"] - s0) / s0) if s0 else None,
        f"{prefix}benign_helpfulness_drop_points_vs_unguarded": _r(100 * (h0 - last["benign_helpfulness"]) / 3),
    }


def _guard_on_generations(result: FilterResult, contexts: list[str]) -> dict[str, Any]:
    """How well the guard's round-0 flags agree with the oracle on the policy's own answers."""
    from saferlhfv.data.oracle import judge

    responses, decisions = result.at(0)
    rows = [(judge(c, r)[1] < 0, d["flagged"]) for c, r, d in zip(contexts, responses, decisions)]
    rows = [(y, f) for (y, f), d in zip(rows, decisions) if not d.get("blocked_at_input")]
    m = binary_metrics([y for y, _ in rows], [f for _, f in rows])
    return {k: _r(m[k]) for k in ("f1", "precision", "recall", "false_positive_rate")}


class OracleGuard:
    """A perfect guard for the mini world: it flags exactly what the oracle rates harmful.

    Filtering with it gives the ceiling of *filter and regenerate* for a policy: how safe resampling
    alone can make it in N rounds when no unsafe answer slips through and no safe one is redrawn.
    Items are matched to their prompt's context by question and picture.
    """

    def __init__(self, prompts):
        self._ctx = {self._key(im, q): c for im, q, c in zip(prompts["image"], prompts["question"], prompts["context"])}

    @staticmethod
    def _key(image, question: str) -> tuple[str, str]:
        return question, hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()

    def moderate(self, images, questions, responses=None) -> list[dict[str, Any]]:
        from saferlhfv.data.oracle import judge

        out = []
        for k, (im, q) in enumerate(zip(images, questions)):
            ctx = json.loads(self._ctx[self._key(im, q)])
            sev = ctx["severity"] if responses is None or not responses[k] else max(0, -judge(ctx, responses[k])[1])
            out.append({"p_unsafe": float(sev > 0), "severity_level": sev, "flagged": sev > 0})
        return out


# --------------------------------------------------------------------------- the stage


def _load_backbone(cfg: Config, sft_dir: Path):
    from saferlhfv.models.factory import apply_lora, load_saved_vlm, vision_tower

    backbone, processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    if cfg.guard.freeze_vision_tower or (cfg.model.family != "tiny" and cfg.model.freeze_vision_tower):
        vision_tower(backbone).requires_grad_(False)
    if cfg.model.family != "tiny":
        if cfg.model.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora.enabled and not hasattr(backbone, "get_base_model"):
            backbone = apply_lora(backbone, cfg.model.lora)
    return backbone, processor


def train_guard(cfg: Config, out_dir: str | Path, sft_dir: str | Path, *, resume: bool = True) -> dict[str, Any]:
    """Train the guard from the SFT backbone in ``sft_dir`` into ``out_dir/model`` and evaluate it.

    Writes ``eval_scores.json`` (the guard's reading of every evaluation row), ``rounds.json``
    (every round's answers, decisions and the oracle's verdicts) and ``probes.json``.

    Returns:
        ``output_unsafe_f1``, ``category_accuracy``, ``severity_accuracy`` (output moderation,
        evaluation split), ``rounds`` (oracle safety rate after rounds 0..R, output moderation),
        ``probe_detection`` / ``probe_false_positive`` ({family: rate}, input moderation),
        ``seconds``, plus the details: ``output`` / ``input`` moderation metrics, harmful-only and
        helpfulness curves, ``input_rounds*`` (input + output moderation), ``safety_gain``,
        ``probe_output_*``, ``guard_on_generations``, ``train``.
    """
    from accelerate import PartialState

    from saferlhfv.data.probes import probe_set, probe_summary
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import judge_samples
    from saferlhfv.models.factory import load_saved_vlm

    start = time.perf_counter()
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    g = cfg.guard
    thresholds = Thresholds.from_config(g)
    # the precursor: it answers the RL train prompts (training rows) and is filtered in the rounds below
    policy_model, policy_processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    policy_model.to(PartialState().device)
    policy = vlm_policy(policy_model, policy_processor, max_new_tokens=cfg.data.max_response_tokens)
    backbone, processor = _load_backbone(cfg, sft_dir)
    model = GuardModel(backbone, n_objects=len(OBJECTS) if g.object_weight else 0, seed=g.seed)
    train_ds, eval_ds = guard_training_set(cfg, policy), guard_rows(cfg, "evaluation")
    collate = guard_collate(processor)
    probe_idx = list(range(0, len(eval_ds), max(1, len(eval_ds) // 128)))[:128]
    held_out = collate([eval_ds[i] for i in probe_idx])

    def eval_fn(m):
        device = next(m.parameters()).device
        out = m(**{k: v.to(device) for k, v in held_out.items() if not k.startswith("label_")})
        acc = ((out.unsafe_logit > 0).float().cpu() == held_out["label_unsafe"]).float().mean()
        return {"eval_unsafe_accuracy": round(float(acc), 4)}

    trainer = Trainer(
        model=model,
        dataset=train_ds,
        collate_fn=collate,
        loss_fn=_loss_fn(cfg),
        cfg=g,
        out_dir=out_dir,
        eval_fn=eval_fn,
        desc="guard",
    )
    result = trainer.train(resume=resume)
    train_seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    if trainer.accelerator.is_main_process:
        save_guard_model(model, processor, out_dir / "model")
    guard = Guard(model, processor, thresholds)

    # 1. moderation on the evaluation split
    table = score_table(guard, eval_ds)
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

    return {
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
        **_vs_unguarded(per_round["input_output"], per_round["output"][0], "input_"),
        **round_curves(per_round["oracle_guard"], "oracle_guard_"),
        **round_curves(per_round["output_fallback"], "fallback_"),
        **(round_curves(per_round["safety_instruction"], "instruction_") if "safety_instruction" in runs else {}),
        "rounds_degenerate_share": [r["degenerate_share"] for r in per_round["output"]],
        "instruction_rounds_degenerate_share": [r["degenerate_share"] for r in per_round.get("safety_instruction", [])],
        "guard_on_generations": _guard_on_generations(runs["output"], contexts),
        "thresholds": thresholds.as_dict(),
        "train": {
            "steps": result["steps"],
            "rows": len(train_ds),
            "train_loss": _r(result["train_loss"]),
            "seconds": round(train_seconds, 2),
            **result["eval"],
        },
        "seconds": round(time.perf_counter() - start, 2),
    }


def load_guard(folder: str | Path, cfg: Config | None = None, *, dtype: str = "float32") -> Guard:
    """The :class:`~saferlhfv.guardrail.Guard` of a guard artifact folder (thresholds from ``cfg.guard``)."""
    thresholds = Thresholds.from_config(cfg.guard) if cfg is not None else None
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


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.1%}"


def describe(metrics: dict[str, Any], part: str) -> str:
    """A short text table of the guard stage's metrics, for notebooks and logs.

    Args:
        part: ``"moderation"``, ``"rounds"`` (gains beside the paper's), ``"overblocking"`` or ``"probes"``.
    """
    m = metrics
    lines: list[str] = []
    if part == "moderation":
        for mode in ("output", "input"):
            x = m[mode]
            lines.append(
                f"{mode:6s} moderation: unsafe F1 {x['unsafe_f1']:.3f} (precision {x['unsafe_precision']:.3f}, "
                f"recall {x['unsafe_recall']:.3f}), category accuracy {x['category_accuracy']:.3f}, "
                f"severity accuracy {x['severity_accuracy']:.3f}  [{x['n']} rows]"
            )
        acc = m["input"].get("object_accuracy")
        if acc:
            shown = ", ".join(f"{k} {v:.0%}" for k, v in acc.items())
            lines.append(f"grounding head names the picture's object (input rows): {shown}")
        g = m["guard_on_generations"]
        lines.append(
            f"output moderation of the precursor's own answers (round 0): F1 {g['f1']:.3f}, "
            f"recall {g['recall']:.3f}, false-positive rate {g['false_positive_rate']:.3f}"
        )
    elif part == "rounds":

        def gain(xs):
            return (xs[-1] - xs[0]) / xs[0] if xs[0] else float("nan")

        lines.append(f"paper (Beaver-Guard-V, 5 rounds, average over models): +{m['paper_safety_gain']:.1%}")
        for label, key in (("output moderation", ""), ("perfect guard (ceiling)", "oracle_guard_")):
            all_, harm = m[f"{key}rounds"], m[f"{key}rounds_harmful"]
            lines.append(
                f"ours, {label:24s}: all prompts {all_[0]:.3f} -> {all_[-1]:.3f} ({gain(all_):+.1%}), "
                f"harmful prompts {harm[0]:.3f} -> {harm[-1]:.3f} ({gain(harm):+.1%})"
            )
        lines.append(
            f"ours, input + output moderation : all prompts {m['rounds'][0]:.3f} -> {m['input_rounds'][-1]:.3f} "
            f"({m['input_safety_gain_vs_unguarded']:+.1%} vs the unguarded policy)"
        )
        lines.append(f"extra generations per round (output moderation): {m['rounds_generations'][1:]}")
    elif part == "overblocking":
        h = m["rounds_benign_helpfulness"]
        lines.append(
            f"benign helpfulness (0..3), output moderation: {h[0]:.2f} -> {h[-1]:.2f} "
            f"({m['benign_helpfulness_drop_points']:+.1f} points of the scale lost)"
        )
        lines.append(
            f"benign helpfulness, input + output moderation: {h[0]:.2f} -> "
            f"{m['input_rounds_benign_helpfulness'][-1]:.2f} "
            f"({m['input_benign_helpfulness_drop_points_vs_unguarded']:+.1f} points lost)"
        )
        if "instruction_rounds" in m:
            s, d = m["instruction_rounds"], m["instruction_rounds_degenerate_share"]
            lines.append(
                f"regenerating with a safety instruction: safety {s[0]:.3f} -> {s[-1]:.3f}, "
                f"degenerate answers {d[0]:.0%} -> {d[-1]:.0%}"
            )
    elif part == "probes":
        lines.append(f"{'family':12s}   input: detection  false pos.   output: detection  false pos.")
        for fam in m["probe_detection"]:
            det, fp = m["probe_detection"][fam], m["probe_false_positive"][fam]
            det_o, fp_o = m["probe_output_detection"][fam], m["probe_output_false_positive"][fam]
            lines.append(f"{fam:12s}          {_pct(det)}     {_pct(fp)}             {_pct(det_o)}     {_pct(fp_o)}")
    else:
        raise ValueError(f"part must be moderation, rounds, overblocking or probes, got {part!r}")
    return "\n".join(lines)
