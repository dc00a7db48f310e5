"""Live samples (notebook 06): one picture and a question, the precursor's and the aligned policy's
answers with their RM-V, CM-V, guard and oracle verdicts.

:func:`load_live_models` loads every model through the stage table (training what is missing);
:func:`live_sample` and :func:`verdict_rows` are what :class:`~saferlhfv.widgets.LiveSampleExplorer`
shows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LiveModels", "load_live_models", "question_choices", "live_sample", "verdict_rows"]


@dataclass
class LiveModels:
    """What :func:`live_sample` runs: two policies, RM-V, CM-V, an optional guard and the oracle."""

    precursor: Any
    policy: Any
    processor: Any
    reward_model: Any
    cost_model: Any
    guard: Any = None
    #: why there is no guard, when there is none.
    guard_note: str = ""
    policy_name: str = "aligned (PPO-Lagrangian)"


def load_live_models(cfg, *, use_guard: bool = True) -> LiveModels:
    """Load (training if missing) the precursor, the PPO-Lagrangian policy of ``cfg``, RM-V, CM-V and the guard.

    The guard is the ``guard`` stage's (trained if missing) when ``use_guard`` is set; otherwise
    ``guard`` is None and ``guard_note`` says why.
    """
    from saferlhfv.models.factory import load_saved_vlm, quiet_loading
    from saferlhfv.stages import ensure
    from saferlhfv.train.guard import load_guard
    from saferlhfv.train.preference import load_scorer
    from saferlhfv.train.sft import load_precursor

    sft_dir, reward_dir, cost_dir, ppo_dir = (ensure(name, cfg)[0] for name in ("sft", "reward", "cost", "ppo"))
    guard_dir, note = None, ""
    if use_guard:
        guard_dir, _ = ensure("guard_model", cfg)
    else:
        note = "guard switched off (use_guard=False)"
    with quiet_loading():
        precursor, processor = load_precursor(sft_dir)
        reward_model, _ = load_scorer(reward_dir)
        cost_model, _ = load_scorer(cost_dir)
        policy, _ = load_saved_vlm(ppo_dir / "model")
        guard = load_guard(guard_dir, cfg) if guard_dir is not None else None
    return LiveModels(precursor.eval(), policy.eval(), processor, reward_model.eval(), cost_model.eval(), guard, note)


def question_choices(context: str | Mapping[str, Any]) -> list[tuple[str, str]]:
    """Questions the mini world can judge about a prompt's picture, each with its oracle context (JSON).

    The prompt's own question first; then every coupled question that involves the picture's object
    (harmful or benign with it), the picture category's text question (harmful with any picture) and
    a captioning question. A context from another source yields only its own question.
    """
    from saferlhfv.data.content import CAPTION_QUESTIONS, CATEGORY_SPECS, QUESTIONS

    ctx = json.loads(context) if isinstance(context, str) else dict(context)
    own = json.dumps(ctx, sort_keys=True, separators=(",", ":"))
    out = [(str(ctx.get("question", "")), own)]
    obj, cat = ctx.get("object"), ctx.get("category")
    if obj is None or cat not in CATEGORY_SPECS:
        return out
    seen = {out[0][0]}

    def add(question: str, **fields) -> None:
        if question in seen:
            return
        seen.add(question)
        new = {**ctx, "question": question, **fields}
        out.append((question, json.dumps(new, sort_keys=True, separators=(",", ":"))))

    for q in QUESTIONS.values():
        if q.kind != "coupled":
            continue
        if obj in q.harmful:
            add(q.text, qid=q.qid, kind="coupled", category=q.category, harmful=True, severity=q.harmful[obj])
        elif obj in q.benign:
            add(q.text, qid=q.qid, kind="coupled", category=q.category, harmful=False, severity=0)
    text_q = next((q for q in CATEGORY_SPECS[cat].questions if q.kind == "text"), None)
    if text_q is not None:
        add(text_q.text, qid=text_q.qid, kind="text", category=cat, harmful=True, severity=text_q.severity)
    add(CAPTION_QUESTIONS[0], qid="caption/0", kind="caption", harmful=False, severity=0)
    return out


def live_sample(
    models: LiveModels,
    image,
    question: str,
    context: str | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    max_new_tokens: int = 40,
    do_sample: bool = True,
) -> dict[str, Any]:
    """Both policies answer (image, question); every judge reads both answers.

    Returns:
        ``{"question", "harmful_prompt", "precursor": {...}, "aligned": {...}}``; each answer has
        ``response``, ``reward`` (RM-V), ``cost`` (CM-V), ``guard`` (the guard's moderation dict, or
        None) and, when a ``context`` is given, ``oracle`` (``helpful``, ``harmless``, ``behaviour``, ``safe``).
    """
    from saferlhfv.data.oracle import analyse, parse_context
    from saferlhfv.models.generation import generate_responses
    from saferlhfv.models.score import score_texts

    image = image.convert("RGB")
    answers = {}
    for name, model in (("precursor", models.precursor), ("aligned", models.policy)):
        answers[name] = generate_responses(
            model, models.processor, [image], [question], max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed
        )[0]
    names = list(answers)
    texts = [answers[n] for n in names]
    imgs, qs = [image] * len(texts), [question] * len(texts)
    rewards = score_texts(models.reward_model, models.processor, imgs, qs, texts)
    costs = score_texts(models.cost_model, models.processor, imgs, qs, texts)
    guard = models.guard.moderate(imgs, qs, texts) if models.guard is not None else [None] * len(texts)
    ctx = parse_context(context) if context is not None else None
    out: dict[str, Any] = {"question": question, "harmful_prompt": None if ctx is None else bool(ctx.harmful)}
    for i, name in enumerate(names):
        entry = {"response": texts[i], "reward": round(rewards[i], 4), "cost": round(costs[i], 4), "guard": guard[i]}
        if ctx is not None:
            j = analyse(ctx, texts[i])
            entry["oracle"] = {
                "helpful": j.helpful,
                "harmless": j.harmless,
                "behaviour": j.behaviour,
                "safe": j.is_safe,
            }
        out[name] = entry
    return out


def verdict_rows(sample: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`live_sample`'s output as one flat row per policy (for a table)."""
    rows = []
    for name in ("precursor", "aligned"):
        e = sample[name]
        g, o = e.get("guard"), e.get("oracle")
        rows.append(
            {
                "policy": name,
                "response": e["response"],
                "RM-V reward": e["reward"],
                "CM-V cost": e["cost"],
                "CM-V says": "harmful" if e["cost"] > 0 else "safe",
                "guard": "n/a"
                if g is None
                else (
                    f"{'BLOCK' if g['flagged'] else 'pass'} (p={g['p_unsafe']:.2f}, {g['severity']}, {g['category']})"
                ),  # fmt: skip
                "oracle helpful": None if o is None else o["helpful"],
                "oracle harmless": None if o is None else o["harmless"],
                "oracle behaviour": None if o is None else o["behaviour"],
            }
        )
    return rows
