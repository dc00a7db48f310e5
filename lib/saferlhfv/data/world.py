"""BeaverTails-V-mini: a procedural world in the BeaverTails-V schema, with everything later stages need.

One seeded generator makes, from a :class:`~saferlhfv.config.DataConfig`:

* :func:`preference_pairs` -- image + question + two responses with dual preferences and graded
  rates, in the hub's paired schema (plus a ``context`` column for the oracle);
* :func:`rl_prompts` -- prompt-only sets for PPO (train / evaluation, disjoint);
* :func:`sft_dataset` -- the precursor SFT mixture (often complies with harmful requests; a
  captioning share teaches grounding);
* :func:`guard_dataset` -- input / output moderation labels (unsafe, category, severity);
* :func:`text_corpus` -- every string the world can produce (for the tiny model's tokenizer);
* :func:`dataset_statistics` -- sizes, category counts, the helpful-vs-safer tension, coupling.

How a record is made: pick a category, then a request *context* -- a coupled question with a
harmful picture (30 %), the same kind of question with a benign picture (45 %), or the
category's text-only harmful question with any of its pictures (25 %) -- draw the picture
(:mod:`saferlhfv.data.images`), write responses from the phrase grammar
(:func:`render_response`) and rate them with the oracle (:mod:`saferlhfv.data.oracle`).
Every record draws from its own ``random.Random`` seeded by (seed, what, split, category,
index), so results never depend on global state or on the order of calls.

Command line (writes the paired data in the hub layout, one folder per category)::

    python -m saferlhfv.data.world --preset tiny --out data/beavertails_v_mini
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from datasets import Dataset, Features, Value

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
    QUESTIONS,
    REFUSALS,
    SEVERITY_NAMES,
    WARNING_BRIDGES,
    Question,
    fill,
)
from saferlhfv.data.images import draw_object_image, png_bytes
from saferlhfv.data.oracle import analyse, judge
from saferlhfv.data.schema import PAIR_FIELDS, pair_features

__all__ = [
    "BEHAVIOUR_TYPES",
    "WRITERS",
    "SPLITS",
    "sample_context",
    "make_context",
    "render_image",
    "render_response",
    "preference_pairs",
    "preference_dataset",
    "rl_prompts",
    "sft_dataset",
    "guard_dataset",
    "guard_row",
    "text_corpus",
    "coupling_rate",
    "dataset_statistics",
    "write_hub_layout",
    "main",
]

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


def _split_name(split: str) -> str:
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

_CACHE: dict[tuple[str, str], Any] = {}


def _cached(what: str, cfg: DataConfig, build):
    key = (what, json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str))
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _pair_record(cfg: DataConfig, split: str, category: str, i: int) -> dict[str, Any]:
    rng = _rng(cfg, "pairs", split, category, i)
    ctx = sample_context(rng, category)
    image = render_image(ctx, cfg.image_size, rng)
    w1, w2 = rng.sample(list(WRITERS), 2)
    kind = "harmful" if ctx["harmful"] else "benign"
    # some answers point at the picture ("hide it where ...") instead of naming the object:
    # for those only the image tells whether the request, and so the answer, is harmful
    p1, p2 = (rng.random() < cfg.pronoun_rate for _ in range(2))
    r1 = render_response(_choice(rng, WRITERS[w1][kind]), ctx, rng, misname=WRITERS[w1]["misname"], pronoun=p1)
    for _ in range(20):
        r2 = render_response(_choice(rng, WRITERS[w2][kind]), ctx, rng, misname=WRITERS[w2]["misname"], pronoun=p2)
        if r2.strip() != r1.strip():
            break
    else:  # pragma: no cover - twenty identical draws in a row do not happen with this grammar
        r2 = render_response("bare_refusal" if "sorry" not in r1 else "off_topic", ctx, rng)
    return {
        "question": ctx["question"],
        "image": {"bytes": image, "path": None},
        "category": category,
        "image_severity": ctx["image_severity"],
        "response_1_from": w1,
        "response_2_from": w2,
        **_annotated(ctx, r1, r2, rng, cfg.label_noise),
        "context": _ctx_json(ctx),
    }


def _annotated(ctx: dict[str, Any], r1: str, r2: str, rng: random.Random, label_noise: float) -> dict[str, Any]:
    """The pair fields the world's annotators fill in for two responses: oracle rates, safety, and the
    two preference ids (ties broken at random), each flipped with probability ``label_noise``."""
    (h1, s1), (h2, s2) = judge(ctx, r1), judge(ctx, r2)
    helpful_id = "1" if h1 > h2 else "2" if h2 > h1 else rng.choice("12")
    safer_id = "1" if s1 > s2 else "2" if s2 > s1 else rng.choice("12")
    if rng.random() < label_noise:
        helpful_id = "2" if helpful_id == "1" else "1"
    if rng.random() < label_noise:
        safer_id = "2" if safer_id == "1" else "1"
    return {
        "response_1": r1,
        "response_2": r2,
        "more_helpful_response_id": helpful_id,
        "safer_response_id": safer_id,
        "is_response_1_safe": str(s1 >= 0),
        "is_response_2_safe": str(s2 >= 0),
        "response_1_helpful_rate": h1,
        "response_2_helpful_rate": h2,
        "response_1_harmless_rate": s1,
        "response_2_harmless_rate": s2,
    }


def _pair_records(cfg: DataConfig, split: str) -> dict[str, list[dict[str, Any]]]:
    split = _split_name(split)
    n = cfg.pairs_per_category_train if split == "train" else cfg.pairs_per_category_eval
    return _cached(
        f"pairs/{split}", cfg, lambda: {c: [_pair_record(cfg, split, c, i) for i in range(n)] for c in _categories(cfg)}
    )


def _pairs_dataset(records: list[dict[str, Any]]) -> Dataset:
    features = pair_features(with_context=True)
    cols = {k: [r[k] for r in records] for k in features}
    return Dataset.from_dict(cols, features=features)


def preference_pairs(cfg: DataConfig, split: str = "train") -> Dataset:
    """Paired preference data of the mini world, in the hub schema.

    Args:
        cfg: sizes (``pairs_per_category_train`` / ``_eval``), ``label_noise``, ``image_size``, ``seed``, ``configs``.
        split: ``"train"`` or ``"evaluation"`` (``"eval"`` also accepted).

    Returns:
        ``datasets.Dataset`` with the 16 hub fields (:data:`saferlhfv.data.schema.PAIR_FIELDS`; ``image`` an
        ``Image`` feature, ids the strings "1"/"2", ``is_response_*_safe`` the strings "True"/"False", rates
        ints) plus ``context`` (JSON string for :func:`saferlhfv.data.oracle.judge`). Rates are the oracle's
        (noise-free); ``more_helpful_response_id`` / ``safer_response_id`` follow the rates (ties at random)
        and are each flipped with probability ``label_noise``.
    """
    split = _split_name(split)
    return _cached(
        f"pairs_ds/{split}",
        cfg,
        lambda: _pairs_dataset([r for recs in _pair_records(cfg, split).values() for r in recs]),
    )


#: how :func:`perturbed_pairs` damages an answer (text the world's writers never produce, but a policy
#: under RL pressure does: it repeats a step, borrows one from another category, names the wrong
#: object, stutters, drops words or stops mid-sentence).
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


def perturbed_pairs(cfg: DataConfig, share: float, split: str = "train", *, seed: int = 0) -> Dataset:
    """Off-distribution negatives for RM-V / CM-V: an answer of the ``split``'s pairs against a damaged copy.

    For ``round(share * n)`` of the ``n`` pairs of ``split`` (chosen at random), the more helpful of the two
    answers (by the oracle) is paired with :func:`perturb_response` of it. Both are rated by the
    oracle and the labels get the world's annotator noise (``label_noise``), exactly as the other
    pairs: the damage is only preferred against when the oracle says it is worse. It teaches the
    score models the text a policy drifts to under RL pressure (reward over-optimisation).

    Returns:
        A dataset in :func:`preference_pairs`' schema; ``response_2_from`` names the perturbation.
    """
    records = [r for recs in _pair_records(cfg, split).values() for r in recs]
    rng = random.Random(f"{cfg.seed}|{seed}|perturbed-pairs|{_split_name(split)}")
    picked = rng.sample(range(len(records)), min(len(records), round(share * len(records))))
    out = []
    for i in picked:
        rec = records[i]
        ctx = json.loads(rec["context"])
        best = "1" if rec["response_1_helpful_rate"] >= rec["response_2_helpful_rate"] else "2"
        r1 = rec[f"response_{best}"]
        kind = rng.choice(PERTURBATIONS)
        r2 = perturb_response(r1, ctx, rng, kind)
        if r2.strip() == r1.strip():
            continue
        out.append({
            **rec,
            "response_1_from": rec[f"response_{best}_from"],
            "response_2_from": f"perturbed:{kind}",
            **_annotated(ctx, r1, r2, rng, cfg.label_noise),
        })  # fmt: skip
    return _pairs_dataset(out)


_PROMPT_FEATURES = Features(
    {
        "image": datasets.Image(),
        "question": Value("string"),
        "category": Value("string"),
        "image_severity": Value("int64"),
        "severity": Value("int64"),
        "is_harmful": Value("bool"),
        "context": Value("string"),
    }
)


def _prompt_row(ctx: dict[str, Any], image: bytes) -> dict[str, Any]:
    return {
        "image": {"bytes": image, "path": None},
        "question": ctx["question"],
        "category": ctx["category"],
        "image_severity": ctx["image_severity"],
        "severity": ctx["severity"],
        "is_harmful": ctx["harmful"],
        "context": _ctx_json(ctx),
    }


def _build_prompts(cfg: DataConfig) -> dict[str, Dataset]:
    out, seen = {}, set()
    for split in SPLITS:
        n = cfg.prompts_per_category_train if split == "train" else cfg.prompts_per_category_eval
        rows = []
        for c in _categories(cfg):
            for i in range(n):
                for attempt in range(100):
                    rng = _rng(cfg, "prompts", split, c, i, attempt)
                    ctx = sample_context(rng, c)
                    image = render_image(ctx, cfg.image_size, rng)
                    key = (ctx["question"], hashlib.sha1(image).hexdigest())
                    if key not in seen:
                        break
                seen.add(key)
                rows.append(_prompt_row(ctx, image))
        out[split] = Dataset.from_dict({k: [r[k] for r in rows] for k in _PROMPT_FEATURES}, features=_PROMPT_FEATURES)
    return out


#: alias of :func:`preference_pairs`.
preference_dataset = preference_pairs


def rl_prompts(cfg: DataConfig, split: str = "train") -> Dataset:
    """Prompt-only sets for RL (PPO rollouts and evaluation).

    Args:
        cfg: sizes ``prompts_per_category_train`` / ``_eval``, ``image_size``, ``seed``, ``configs``.
        split: ``"train"`` or ``"evaluation"``; no (question, picture) pair appears in both.

    Returns:
        ``datasets.Dataset`` with ``image`` (Image), ``question`` (str), ``category`` (str),
        ``image_severity`` (int, how harmful the picture looks), ``severity`` (int 0..3, of the request:
        0 = benign), ``is_harmful`` (bool) and ``context`` (JSON str: everything the oracle needs).
        About 55 % of prompts are harmful requests.
    """
    return _cached("prompts", cfg, lambda: _build_prompts(cfg))[_split_name(split)]


_SFT_FEATURES = Features(
    {
        "image": datasets.Image(),
        "question": Value("string"),
        "response": Value("string"),
        "behaviour": Value("string"),
        "category": Value("string"),
        "is_harmful": Value("bool"),
        "context": Value("string"),
    }
)


def _build_sft(cfg: DataConfig) -> Dataset:
    comply = {k: v * cfg.precursor_compliance for k, v in PRECURSOR_HARMFUL_COMPLY.items()}
    other = {k: v * (1 - cfg.precursor_compliance) for k, v in PRECURSOR_HARMFUL_OTHER.items()}
    harmful_mix = {**comply, **other}
    rows = []
    for c in _categories(cfg):
        for i in range(cfg.sft_per_category):
            rng = _rng(cfg, "sft", c, i)
            caption = rng.random() < cfg.sft_caption_share
            ctx = sample_context(rng, c, caption=caption)
            image = render_image(ctx, cfg.image_size, rng)
            if caption:
                behaviour = "caption"
            else:
                behaviour = _choice(rng, harmful_mix if ctx["harmful"] else PRECURSOR_BENIGN)
            rows.append(
                {
                    "image": {"bytes": image, "path": None},
                    "question": ctx["question"],
                    "response": render_response(behaviour, ctx, rng),
                    "behaviour": behaviour,
                    "category": c,
                    "is_harmful": ctx["harmful"],
                    "context": _ctx_json(ctx),
                }
            )
    return Dataset.from_dict({k: [r[k] for r in rows] for k in _SFT_FEATURES}, features=_SFT_FEATURES)


def sft_dataset(cfg: DataConfig) -> Dataset:
    """The precursor SFT mixture.

    A share ``cfg.sft_caption_share`` are grounding examples ("what is in the picture?" -> "the picture
    shows a knife."); the rest are category requests answered like a precursor VLM: benign requests
    mostly with compliance, harmful ones with compliance in a share ``cfg.precursor_compliance``
    (otherwise refusals and off-topic replies), so the SFT policy is measurably unsafe. Responses name
    the object in the picture.

    Returns:
        ``datasets.Dataset`` with ``image`` (Image), ``question``, ``response``, ``behaviour`` (one of
        :data:`BEHAVIOUR_TYPES`), ``category`` (str), ``is_harmful`` (bool), ``context`` (JSON str);
        ``cfg.sft_per_category`` rows per category.
    """
    return _cached("sft", cfg, lambda: _build_sft(cfg))


def _build_captions(cfg: DataConfig, n: int) -> Dataset:
    cats = _categories(cfg)
    rows = []
    for i in range(n):
        rng = _rng(cfg, "captions", i)
        ctx = sample_context(rng, cats[i % len(cats)], caption=True)
        image = render_image(ctx, cfg.image_size, rng)
        rows.append(
            {
                "image": {"bytes": image, "path": None},
                "question": ctx["question"],
                "response": render_response("caption", ctx, rng),
                "behaviour": "caption",
                "category": ctx["category"],
                "is_harmful": False,
                "context": _ctx_json(ctx),
            }
        )
    return Dataset.from_dict({k: [r[k] for r in rows] for k in _SFT_FEATURES}, features=_SFT_FEATURES)


def caption_dataset(cfg: DataConfig, n: int) -> Dataset:
    """``n`` grounding examples ("what is in the picture?" -> "the picture shows a knife."), for the
    vision-language alignment stage that precedes SFT (as LLaVA's first training stage does).

    Drawn from their own seed stream, so they never repeat the SFT mixture's pictures; same
    columns as :func:`sft_dataset`.
    """
    return _cached(f"captions-{n}", cfg, lambda: _build_captions(cfg, n))


_GUARD_FEATURES = Features(
    {
        "image": datasets.Image(),
        "question": Value("string"),
        "response": Value("string"),
        "mode": Value("string"),
        "is_unsafe": Value("bool"),
        "category": Value("string"),
        "severity": Value("int64"),
        "context": Value("string"),
    }
)


def _build_guard(cfg: DataConfig, split: str) -> Dataset:
    n = cfg.guard_per_category_train if split == "train" else cfg.guard_per_category_eval
    rows = []
    for c in _categories(cfg):
        for i in range(n):
            for mode in ("input", "output"):
                rng = _rng(cfg, "guard", split, c, i, mode)
                ctx = sample_context(rng, c)
                image = render_image(ctx, cfg.image_size, rng)
                rows.append(guard_row(ctx, mode, image, rng, misname=0.05))
    return Dataset.from_dict({k: [r[k] for r in rows] for k in _GUARD_FEATURES}, features=_GUARD_FEATURES)


def guard_row(ctx: dict[str, Any], mode: str, image: bytes, rng: random.Random, *, misname: float = 0.0):
    """One guard row for a context and its picture (PNG bytes).

    ``mode="input"``: the request alone, unsafe when the context is harmful, with its severity.
    ``mode="output"``: a response drawn from the guard's answer mixture (``misname``: chance of
    naming a wrong object), labelled by the oracle (unsafe when harmless < 0, severity = -harmless).
    """
    if mode == "input":
        response, unsafe, sev = "", ctx["harmful"], ctx["severity"]
    else:
        behaviour = _choice(rng, GUARD_HARMFUL if ctx["harmful"] else GUARD_BENIGN)
        response = render_response(behaviour, ctx, rng, misname=misname)
        harmless = judge(ctx, response)[1]
        unsafe, sev = harmless < 0, max(0, -harmless)
    return {
        "image": {"bytes": image, "path": None},
        "question": ctx["question"],
        "response": response,
        "mode": mode,
        "is_unsafe": bool(unsafe),
        "category": ctx["category"],
        "severity": int(sev),
        "context": _ctx_json(ctx),
    }


def guard_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """Labels for Beaver-Guard-V: input moderation (image + question) and output moderation (+ response).

    Args:
        cfg: sizes ``guard_per_category_train`` / ``_eval`` (that many input *and* output rows per category).
        split: ``"train"`` or ``"evaluation"``.

    Returns:
        ``datasets.Dataset`` with ``image`` (Image), ``question``, ``response`` (``""`` for input rows),
        ``mode`` (``"input"`` / ``"output"``), ``is_unsafe`` (bool), ``category`` (one of the 20 names: the
        request's category), ``severity`` (int: 0 none, 1 minor, 2 moderate, 3 severe) and ``context``.
        Input rows: unsafe = the request is harmful, severity = the request's. Output rows: unsafe = the
        oracle's harmless rate < 0, severity = minus that rate (0 when safe).
    """
    split = _split_name(split)
    return _cached(f"guard/{split}", cfg, lambda: _build_guard(cfg, split))


def text_corpus(cfg: DataConfig | None = None) -> list[str]:
    """Every string the world can produce, for training a tokenizer.

    Questions (category and caption), every response phrase filled with every object (steps,
    openers, refusals, explanations, alternatives, captions, off-topic remarks), object names and
    the words drawn in typographic pictures, plus one example response of every behaviour per
    category (to show the joining words and punctuation). The vocabulary is a few hundred words.

    Args:
        cfg: the data config (the corpus does not depend on sizes; ``configs`` is ignored so that a
            tokenizer covers the whole world).

    Returns:
        A list of unique strings, in a fixed order.
    """
    out: list[str] = []
    objs = list(OBJECTS)
    out += [q.text for q in QUESTIONS.values()] + list(CAPTION_QUESTIONS)
    for spec in CATEGORY_SPECS.values():
        for o in spec.objects:
            out += [fill(s, o) for s in spec.steps]
        out += [spec.explanation, spec.alternative]
    for o in objs:
        out += [fill(t, o) for t in OPENERS_DETAILED + OPENERS_BRIEF + CAPTION_TEMPLATES + OFF_TOPIC]
        out += [OBJECTS[o].name]
        if OBJECTS[o].sign:
            out += [OBJECTS[o].sign, OBJECTS[o].sign.lower()]
    out += list(REFUSALS + GENERIC_EXPLANATIONS + GENERIC_ALTERNATIVES + WARNING_BRIDGES)
    rng = random.Random(0)
    for c in CATEGORIES:
        for b in BEHAVIOUR_TYPES:
            ctx = sample_context(rng, c, caption=b == "caption")
            out.append(render_response(b, ctx, rng))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- measurements


def coupling_rate(cfg: DataConfig | None = None) -> dict[str, Any]:
    """How often the picture decides whether a request is harmful, measured with the oracle.

    For every category question, one fixed compliance response (the detailed compliance written for
    the question's first picture) is judged with every picture the world pairs with the question.
    A question is *coupled* when that same text is judged safe with some pictures and unsafe with
    others.

    Returns:
        ``{"questions": n, "coupled": k, "rate": k / n, "per_question": {qid: bool}}``.
    """
    per_q = {}
    for q in QUESTIONS.values():
        spec = CATEGORY_SPECS[q.category]
        objs = list(q.harmful) + list(q.benign) if q.kind == "coupled" else list(spec.objects)
        ctx0 = {"category": q.category, "kind": q.kind, "object": objs[0]}
        steps = [fill(s, objs[0]) for s in spec.steps[:3]]
        text = f"first {steps[0]}, then {steps[1]}, and finally {steps[2]}."
        verdicts = set()
        for o in objs:
            harmful = q.kind == "text" or o in q.harmful
            sev = q.severity if q.kind == "text" else q.harmful.get(o, 0)
            verdicts.add(judge({**ctx0, "object": o, "harmful": harmful, "severity": sev}, text)[1] >= 0)
        per_q[q.qid] = len(verdicts) == 2
    k = sum(per_q.values())
    return {"questions": len(per_q), "coupled": k, "rate": k / len(per_q), "per_question": per_q}


def _text_only_ceiling(contexts: list[dict[str, Any]]) -> float:
    """Best accuracy at telling harmful from benign requests from the question text alone."""
    by_q: dict[str, Counter] = {}
    for ctx in contexts:
        by_q.setdefault(ctx["question"], Counter())[ctx["harmful"]] += 1
    return sum(max(c.values()) for c in by_q.values()) / max(1, len(contexts))


def dataset_statistics(cfg: DataConfig) -> dict[str, Any]:
    """Statistics of the mini world for a config (JSON-serialisable), as the pipeline records them.

    Returns:
        dict with ``sizes`` (rows per dataset and split), ``pairs_per_category`` (train),
        ``harmful_share`` (of RL train prompts), ``severity_counts`` (train pairs, by request severity),
        ``helpful_ne_safer`` (share of pairs whose more helpful response is not the safer one, per split),
        ``label_noise`` (configured) and ``label_disagreement`` (share of pairs with unequal rates whose label
        contradicts the rates: the realised noise), ``coupling`` (:func:`coupling_rate` without the per-question
        table, plus ``prompt_share``: share of RL train prompts whose question is coupled), ``text_only_ceiling``
        (best accuracy at predicting harmfulness from the question alone, RL train prompts),
        ``sft_behaviours`` and ``precursor_safety_rate_harmful`` (oracle safety rate of the SFT responses on
        harmful requests), ``vocabulary_words`` (distinct words in :func:`text_corpus`) and ``seconds``
        (generation time).
    """
    t0 = time.perf_counter()
    stats: dict[str, Any] = {"source": "mini", "seed": cfg.seed, "image_size": cfg.image_size, "sizes": {}}
    for split in SPLITS:
        stats["sizes"][split] = {
            "pairs": len(preference_pairs(cfg, split)),
            "rl_prompts": len(rl_prompts(cfg, split)),
            "guard": len(guard_dataset(cfg, split)),
        }
    stats["sizes"]["train"]["sft"] = len(sft_dataset(cfg))
    train_recs = [r for recs in _pair_records(cfg, "train").values() for r in recs]
    stats["pairs_per_category"] = {c: len(v) for c, v in _pair_records(cfg, "train").items()}
    sev = Counter(json.loads(r["context"])["severity"] for r in train_recs)
    stats["severity_counts"] = {SEVERITY_NAMES[k]: sev.get(k, 0) for k in range(4)}
    stats["helpful_ne_safer"], stats["label_disagreement"] = {}, {}
    for split in SPLITS:
        recs = [r for v in _pair_records(cfg, split).values() for r in v]
        stats["helpful_ne_safer"][split] = round(
            sum(r["more_helpful_response_id"] != r["safer_response_id"] for r in recs) / max(1, len(recs)), 4
        )
        flips, n = 0, 0
        for r in recs:
            for rate, lab in (("helpful", "more_helpful_response_id"), ("harmless", "safer_response_id")):
                a, b = r[f"response_1_{rate}_rate"], r[f"response_2_{rate}_rate"]
                if a != b:
                    n += 1
                    flips += r[lab] != ("1" if a > b else "2")
        stats["label_disagreement"][split] = round(flips / max(1, n), 4)
    stats["label_noise"] = cfg.label_noise
    prompt_ctx = [json.loads(c) for c in rl_prompts(cfg, "train")["context"]]
    coupling = coupling_rate(cfg)
    stats["coupling"] = {
        "questions": coupling["questions"],
        "coupled": coupling["coupled"],
        "rate": round(coupling["rate"], 4),
        "prompt_share": round(sum(coupling["per_question"][c["qid"]] for c in prompt_ctx) / max(1, len(prompt_ctx)), 4),
    }
    stats["harmful_share"] = round(sum(c["harmful"] for c in prompt_ctx) / max(1, len(prompt_ctx)), 4)
    stats["text_only_ceiling"] = round(_text_only_ceiling(prompt_ctx), 4)
    sft = sft_dataset(cfg)
    stats["sft_behaviours"] = dict(sorted(Counter(sft["behaviour"]).items()))
    harm = [(c, r) for c, r, h in zip(sft["context"], sft["response"], sft["is_harmful"]) if h]
    stats["precursor_safety_rate_harmful"] = round(sum(analyse(c, r).is_safe for c, r in harm) / max(1, len(harm)), 4)
    vocab = {w for s in text_corpus(cfg) for w in re.findall(r"[a-z0-9]+", s.lower())}
    stats["vocabulary_words"] = len(vocab)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return stats


# --------------------------------------------------------------------------- hub layout on disk


def _card(cfg: DataConfig, cats: tuple[str, ...]) -> str:
    lines = ["---", "license: cc-by-nc-4.0", "configs:"]
    for c in cats:
        lines += [f"- config_name: {c}", "  data_files:"]
        for split in SPLITS:
            lines += [f"  - split: {split}", f"    path: {c}/{split}-00000-of-00001.parquet"]
    lines += [
        "---",
        "",
        "# BeaverTails-V-mini",
        "",
        "Generated by `python -m saferlhfv.data.world` (saferlhfv): a procedural stand-in for",
        "saferlhf-v/BeaverTails-V in the same paired schema, plus a `context` column for the",
        "mini world's oracle. See `data/README.md` in the saferlhfv repository for the data card.",
        "",
        "Generator settings:",
        "",
        "```json",
        json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_hub_layout(cfg: DataConfig, out: str | Path) -> list[Path]:
    """Write the paired data in the hub's layout: ``<out>/<category>/{train,evaluation}-00000-of-00001.parquet``.

    Also writes ``<out>/README.md`` (hub-style card with the ``configs`` metadata). The output is a
    function of ``cfg`` alone: the same config gives the same bytes.

    Returns:
        The files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cats = _categories(cfg)
    written = []
    for split in SPLITS:
        recs = _pair_records(cfg, split)
        for c in cats:
            path = out / c / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_pairs_dataset(recs[c]).data.table, path, compression="zstd")
            written.append(path)
    card = out / "README.md"
    card.write_text(_card(cfg, cats))
    written.append(card)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m saferlhfv.data.world --preset tiny --out DIR [--set data.seed=1] [--stats FILE]``."""
    from saferlhfv.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="python -m saferlhfv.data.world", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to write the hub layout into")
    parser.add_argument("--stats", default=None, help="also write dataset_statistics() as JSON to this file")
    args = parser.parse_args(argv)
    cfg = config_from_args(args).data
    t0 = time.perf_counter()
    files = write_hub_layout(cfg, args.out)
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.2f} MB) to {args.out} in {time.perf_counter() - t0:.1f} s")
    if args.stats:
        stats = dataset_statistics(cfg)
        Path(args.stats).write_text(json.dumps(stats, indent=2) + "\n")
        print(f"statistics -> {args.stats}")
    return 0


assert set(PAIR_FIELDS) <= set(pair_features(with_context=True))

if __name__ == "__main__":
    raise SystemExit(main())
