"""The mini world's datasets, built from the grammar and rated by the oracle; cached per config
in memory: preference pairs (and perturbed ones), RL prompts, the SFT mixture, captions, guard rows,
and the text corpus the tiny tokenizer trains on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

import datasets
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
    WARNING_BRIDGES,
    fill,
)
from saferlhfv.data.oracle import judge
from saferlhfv.data.schema import pair_features
from saferlhfv.data.world.grammar import (
    BEHAVIOUR_TYPES,
    GUARD_BENIGN,
    GUARD_HARMFUL,
    PERTURBATIONS,
    PRECURSOR_BENIGN,
    PRECURSOR_HARMFUL_COMPLY,
    PRECURSOR_HARMFUL_OTHER,
    SPLITS,
    WRITERS,
    _categories,
    _choice,
    _ctx_json,
    _rng,
    perturb_response,
    render_image,
    render_response,
    sample_context,
    split_name,
)

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
    split = split_name(split)
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
    split = split_name(split)
    return _cached(
        f"pairs_ds/{split}",
        cfg,
        lambda: _pairs_dataset([r for recs in _pair_records(cfg, split).values() for r in recs]),
    )


#: how :func:`perturbed_pairs` damages an answer (text the world's writers never produce, but a policy
#: under RL pressure does: it repeats a step, borrows one from another category, names the wrong
#: object, stutters, drops words or stops mid-sentence).
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
    rng = random.Random(f"{cfg.seed}|{seed}|perturbed-pairs|{split_name(split)}")
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
    return _cached("prompts", cfg, lambda: _build_prompts(cfg))[split_name(split)]


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


#: the columns of a guard row (also of the single-response hub loader's rows).
GUARD_FEATURES = Features(
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
    return Dataset.from_dict({k: [r[k] for r in rows] for k in GUARD_FEATURES}, features=GUARD_FEATURES)


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
    split = split_name(split)
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
