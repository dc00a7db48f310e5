"""The mini world's grammar: behaviour tables, request contexts, pictures and responses.

Every draw takes its own ``random.Random``; :func:`render_response` writes an answer of a behaviour
type for a context, :func:`perturb_response` damages one (off-distribution negatives).
"""

from __future__ import annotations

import json
import random
from typing import Any

from saferlhfv.config import DataConfig
from saferlhfv.data.content import (
    CAPTION_QUESTIONS,
    CAPTION_TEMPLATES,
    CATEGORIES,
    CATEGORY_SPECS,
    GENERIC_ALTERNATIVES,
    GENERIC_EXPLANATIONS,
    OBJECTS,
    OFF_TOPIC,
    OPENERS_BRIEF,
    OPENERS_DETAILED,
    REFUSALS,
    WARNING_BRIDGES,
    Question,
    fill,
)
from saferlhfv.data.images import draw_object_image, png_bytes

#: response behaviour types of the grammar.
BEHAVIOUR_TYPES = (
    "detailed_compliance",
    "brief_compliance",
    "warned_compliance",
    "refusal_explained",
    "bare_refusal",
    "off_topic",
    "caption",
)
COMPLIANCE = ("detailed_compliance", "brief_compliance", "warned_compliance")
SPLITS = ("train", "evaluation")

#: share of request contexts of each kind (the rest are coupled questions with a benign picture).
P_TEXT_QUESTION = 0.25
P_COUPLED_HARMFUL = 0.30
#: picture variants: share of typographic signs and of labelled drawings (objects that have a sign word).
P_SIGN = 0.12
P_LABELED = 0.15
#: the most words a generated response has (responses must fit in 48 tokens, 32 in tiny PPO rollouts).
MAX_RESPONSE_WORDS = 26

#: The fictional models that wrote the two responses of a pair, with their behaviour mixtures
#: (harmful context, benign context) and how often they misname the object.
WRITERS: dict[str, dict[str, Any]] = {
    "eager-vlm": {
        "harmful": {
            "detailed_compliance": 0.45,
            "brief_compliance": 0.3,
            "warned_compliance": 0.1,
            "refusal_explained": 0.05,
            "bare_refusal": 0.05,
            "off_topic": 0.05,
        },
        "benign": {
            "detailed_compliance": 0.6,
            "brief_compliance": 0.3,
            "refusal_explained": 0.03,
            "bare_refusal": 0.02,
            "off_topic": 0.05,
        },
        "misname": 0.08,
    },
    "careful-vlm": {
        "harmful": {
            "detailed_compliance": 0.05,
            "brief_compliance": 0.05,
            "warned_compliance": 0.1,
            "refusal_explained": 0.6,
            "bare_refusal": 0.15,
            "off_topic": 0.05,
        },
        "benign": {
            "detailed_compliance": 0.45,
            "brief_compliance": 0.25,
            "refusal_explained": 0.15,
            "bare_refusal": 0.1,
            "off_topic": 0.05,
        },
        "misname": 0.04,
    },
    "terse-vlm": {
        "harmful": {
            "detailed_compliance": 0.05,
            "brief_compliance": 0.35,
            "refusal_explained": 0.1,
            "bare_refusal": 0.45,
            "off_topic": 0.05,
        },
        "benign": {
            "detailed_compliance": 0.1,
            "brief_compliance": 0.6,
            "refusal_explained": 0.05,
            "bare_refusal": 0.2,
            "off_topic": 0.05,
        },
        "misname": 0.08,
    },
    "wandering-vlm": {
        "harmful": {
            "detailed_compliance": 0.1,
            "brief_compliance": 0.2,
            "refusal_explained": 0.1,
            "bare_refusal": 0.1,
            "off_topic": 0.5,
        },
        "benign": {
            "detailed_compliance": 0.1,
            "brief_compliance": 0.2,
            "refusal_explained": 0.1,
            "bare_refusal": 0.1,
            "off_topic": 0.5,
        },
        "misname": 0.2,
    },
}

#: the precursor (SFT) policy on benign requests; on harmful ones it complies with
#: probability ``DataConfig.precursor_compliance`` (split as below) and otherwise refuses / wanders.
PRECURSOR_BENIGN = {
    "detailed_compliance": 0.62,
    "brief_compliance": 0.3,
    "refusal_explained": 0.03,
    "bare_refusal": 0.02,
    "off_topic": 0.03,
}
PRECURSOR_HARMFUL_COMPLY = {"detailed_compliance": 0.58, "brief_compliance": 0.34, "warned_compliance": 0.08}
PRECURSOR_HARMFUL_OTHER = {"refusal_explained": 0.6, "bare_refusal": 0.25, "off_topic": 0.15}
#: guard output moderation: a balanced mixture so that both labels are common.
GUARD_HARMFUL = {
    "detailed_compliance": 0.3,
    "brief_compliance": 0.2,
    "warned_compliance": 0.05,
    "refusal_explained": 0.25,
    "bare_refusal": 0.1,
    "off_topic": 0.1,
}
GUARD_BENIGN = {
    "detailed_compliance": 0.45,
    "brief_compliance": 0.3,
    "refusal_explained": 0.1,
    "bare_refusal": 0.1,
    "off_topic": 0.05,
}


# --------------------------------------------------------------------------- helpers


def split_name(split: str) -> str:
    """The canonical split: ``"train"``, or ``"evaluation"`` for any of eval / evaluation / test / validation."""
    if split in ("eval", "evaluation", "test", "validation"):
        return "evaluation"
    if split == "train":
        return "train"
    raise ValueError(f"unknown split {split!r}; BeaverTails-V has 'train' and 'evaluation'")


def _categories(cfg: DataConfig) -> tuple[str, ...]:
    if not cfg.configs:
        return CATEGORIES
    bad = [c for c in cfg.configs if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown category config(s) {bad}; choose from: {', '.join(CATEGORIES)}")
    return tuple(c for c in CATEGORIES if c in cfg.configs)


def _rng(cfg: DataConfig, *parts: Any) -> random.Random:
    return random.Random("|".join(str(p) for p in (cfg.seed, *parts)))


def _choice(rng: random.Random, weights: dict[str, float]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _ctx_json(ctx: dict[str, Any]) -> str:
    return json.dumps(ctx, sort_keys=True, separators=(",", ":"))


def sample_context(rng: random.Random, category: str, *, caption: bool = False) -> dict[str, Any]:
    """Draw one request context for ``category``.

    Returns:
        dict with ``category``, ``qid``, ``question``, ``kind`` (``coupled`` / ``text`` / ``caption``),
        ``object``, ``harmful``, ``severity`` (0..3), ``image_severity`` and ``variant`` (picture variant).
    """
    spec = CATEGORY_SPECS[category]
    coupled = [q for q in spec.questions if q.kind == "coupled"]
    text_q = next(q for q in spec.questions if q.kind == "text")
    if caption:
        i = rng.randrange(len(CAPTION_QUESTIONS))
        qid, question, kind = f"caption/{i}", CAPTION_QUESTIONS[i], "caption"
        obj, harmful, sev = rng.choice(spec.objects), False, 0
    else:
        r = rng.random()
        if r < P_TEXT_QUESTION:
            q: Question = text_q
            obj, harmful, sev = rng.choice(spec.objects), True, q.severity
        elif r < P_TEXT_QUESTION + P_COUPLED_HARMFUL:
            q = rng.choice(coupled)
            obj = rng.choice(list(q.harmful))
            harmful, sev = True, q.harmful[obj]
        else:
            q = rng.choice(coupled)
            obj, harmful, sev = rng.choice(q.benign), False, 0
        qid, question, kind = q.qid, q.text, q.kind
    variant = "object"
    if OBJECTS[obj].sign:
        r = rng.random()
        variant = "sign" if r < P_SIGN else ("labeled" if r < P_SIGN + P_LABELED else "object")
    return make_context(category, qid, question, kind, obj, harmful, sev, variant)


def make_context(
    category: str, qid: str, question: str, kind: str, obj: str, harmful: bool, severity: int, variant: str
) -> dict[str, Any]:
    """A request context (what the oracle reads) from its parts; ``image_severity`` comes from the object."""
    return {
        "category": category,
        "qid": qid,
        "question": question,
        "kind": kind,
        "object": obj,
        "harmful": harmful,
        "severity": severity,
        "image_severity": OBJECTS[obj].image_severity,
        "variant": variant,
    }


def render_image(ctx: dict[str, Any], size: int, rng: random.Random) -> bytes:
    """PNG bytes of the context's picture (object and variant from ``ctx``)."""
    return png_bytes(draw_object_image(ctx["object"], ctx["variant"], size, rng))


def _n_words(text: str) -> int:
    return len(text.split())


def render_response(
    behaviour: str, ctx: dict[str, Any], rng: random.Random, *, misname: float = 0.0, pronoun: bool = False
) -> str:
    """Write one response of the given behaviour type for a context, from the phrase grammar.

    Args:
        behaviour: one of :data:`BEHAVIOUR_TYPES`.
        ctx: a context from :func:`sample_context`.
        rng: source of the phrase choices.
        misname: probability that the writer names a wrong object (a misperception), which the
            oracle punishes in helpfulness.
        pronoun: refer to the object as "it" instead of naming it (captions still name it), so
            that only the picture tells what the answer is about.

    Returns:
        A short response (at most about 30 words).
    """
    spec = CATEGORY_SPECS[ctx["category"]]
    obj = ctx["object"]
    if misname and rng.random() < misname:
        others = [o for o in spec.objects if o != obj] or [o for o in OBJECTS if o != obj]
        obj = rng.choice(others)

    def expl():
        return spec.explanation if rng.random() < 0.7 else rng.choice(GENERIC_EXPLANATIONS)

    def alt():
        return spec.alternative if rng.random() < 0.7 else rng.choice(GENERIC_ALTERNATIVES)

    steps = [fill(s, obj, pronoun=pronoun) for s in rng.sample(spec.steps, len(spec.steps))]
    if behaviour == "detailed_compliance":
        opener = fill(rng.choice(OPENERS_DETAILED), obj, pronoun=pronoun)
        candidates = []
        if rng.random() < 0.75:
            candidates.append(f"{opener} first {steps[0]}, then {steps[1]}, and finally {steps[2]}.")
            candidates.append(f"first {steps[0]}, then {steps[1]}, and finally {steps[2]}.")
        candidates.append(f"{opener} first {steps[0]}, and then {steps[1]}.")
        candidates.append(f"first {steps[0]}, and then {steps[1]}.")
        return next(c for c in candidates if _n_words(c) <= MAX_RESPONSE_WORDS or c is candidates[-1])
    if behaviour == "brief_compliance":
        return f"{fill(rng.choice(OPENERS_BRIEF), obj, pronoun=pronoun)} just {steps[0]}."
    if behaviour == "warned_compliance":
        text = f"{expl()} {WARNING_BRIDGES[0]} {steps[0]} and then {steps[1]}."
        return text if _n_words(text) <= MAX_RESPONSE_WORDS else f"{expl()} {WARNING_BRIDGES[0]} {steps[0]}."
    if behaviour == "refusal_explained":
        parts = [rng.choice(REFUSALS)]
        r = rng.random()
        if r < 0.15:
            parts.append(alt())
        elif r < 0.25:
            parts.append(expl())
        else:
            parts += [expl(), alt()]
        return " ".join(parts)
    if behaviour == "bare_refusal":
        return rng.choice(REFUSALS)
    if behaviour == "off_topic":
        k = 1 if rng.random() < 0.6 else 2
        return " ".join(fill(t, obj, pronoun=pronoun) for t in rng.sample(OFF_TOPIC, k))
    if behaviour == "caption":
        return fill(rng.choice(CAPTION_TEMPLATES), obj)
    raise ValueError(f"unknown behaviour {behaviour!r}; choose one of {BEHAVIOUR_TYPES}")


# --------------------------------------------------------------------------- generation (cached)

PERTURBATIONS = ("repeat_step", "foreign_step", "wrong_object", "stutter", "drop_words", "truncate")


def perturb_response(text: str, ctx: dict[str, Any], rng: random.Random, kind: str) -> str:
    """A damaged copy of ``text`` (one of :data:`PERTURBATIONS`), for off-distribution negatives.

    ``repeat_step`` and ``foreign_step`` act on compliance answers (a step of the category is
    written again, or replaced by a step of another category); the others on any text.
    """
    spec = CATEGORY_SPECS[ctx["category"]]
    words = text.split()
    if kind in ("repeat_step", "foreign_step"):
        steps = [fill(t, ctx["object"]) for t in spec.steps]
        found = [st for st in steps if st in text]
        if not found:
            return perturb_response(text, ctx, rng, "stutter")
        if kind == "repeat_step":
            first = found[0]
            return text.replace(rng.choice(found[1:]), first, 1) if len(found) > 1 else f"{text} then {first}."
        other = CATEGORY_SPECS[rng.choice([c for c in CATEGORIES if c != ctx["category"]])]
        return text.replace(rng.choice(found), fill(rng.choice(other.steps), rng.choice(other.objects)), 1)
    if kind == "wrong_object":
        name = OBJECTS[ctx["object"]].name
        other = OBJECTS[rng.choice([o for o in OBJECTS if o != ctx["object"]])].name
        return text.replace(name, other) if name in text else f"{text} the {other} is here."
    if kind == "stutter":
        i, n = rng.randrange(len(words)), rng.randint(2, 4)
        return " ".join(words[: i + n] + words[i : i + n] * rng.randint(1, 3) + words[i + n :])
    if kind == "drop_words":
        keep = [w for w in words if rng.random() > 0.35] or words[:1]
        return " ".join(keep)
    if kind == "truncate":
        return " ".join(words[: max(1, rng.randint(len(words) // 4, max(1, len(words) // 2)))])
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
