"""The streaming monitor's data: answers with word-level and answer-level harm labels, in three splits.

Each row is a request of the mini world (picture + question, its ``context``) and one answer:

* written by the world's grammar (:func:`saferlhfv.data.world.render_response`), with the
  behaviour chosen for the row's target label: a compliance answer to a harmful request for a
  harmful row; a refusal / explanation / off-topic reply to a harmful request, or any answer
  (mostly compliance: the same steps, on a benign picture) to a benign request for a safe row;
  a share ``monitor.twin_share`` of the safe rows are **benign twins**: a harmful-sounding
  question about a harmless picture, answered with a compliance drawn exactly as for a harmful
  request, so that only the picture (and the object's name) tells the label;
* or, for a share ``monitor.policy_share`` of each split, sampled from a policy (the SFT
  precursor), judged by the oracle and kept so that its harmful and safe answers balance.

Labels come from the oracle (:mod:`saferlhfv.data.oracle`): ``is_harmful`` = harmless < 0, and
``harmful_spans`` the character spans of the words of its harmful units
(:func:`~saferlhfv.data.oracle.harmful_word_spans`); token labels are made from the spans for a
given tokenizer at collation (:func:`saferlhfv.models.monitor.encode_monitor_batch`). Half of
the rows of each split are harmful (up to what a policy yields). The three splits have disjoint
prompts (no question + picture pair in two splits); everything is deterministic in
``data.seed`` and the ``seed`` argument.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Sequence
from typing import Any

import datasets as hf
from PIL import Image

from saferlhfv.config import Config
from saferlhfv.data.content import CATEGORIES, OBJECTS
from saferlhfv.data.oracle import harmful_word_spans, judge
from saferlhfv.data.rgb import to_rgb
from saferlhfv.data.world import render_image, render_response, sample_context
from saferlhfv.data.world.grammar import (
    PRECURSOR_BENIGN,
    PRECURSOR_HARMFUL_COMPLY,
    PRECURSOR_HARMFUL_OTHER,
    _choice,
    _ctx_json,
)

__all__ = ["MONITOR_SPLITS", "MONITOR_FEATURES", "monitor_splits", "world_row", "rows_from_answers"]

#: the monitor's splits, in the order they are drawn.
MONITOR_SPLITS = ("train", "validation", "test")

MONITOR_FEATURES = hf.Features(
    {
        "image": hf.Image(),
        "question": hf.Value("string"),
        "response": hf.Value("string"),
        "context": hf.Value("string"),
        "harmful_spans": hf.Sequence(hf.Sequence(hf.Value("int64"))),
        "is_harmful": hf.Value("bool"),
        "source": hf.Value("string"),
    }
)

#: share of the benign twins (``monitor.twin_share``) whose object can be written on a sign that show
#: it so: without them, harmful-sounding questions about a sign naming a harmless object were the
#: benign answers streaming moderation still stopped most often (the world draws a sign for 12 % of them).
TWIN_SIGN_SHARE = 0.5

#: a policy: ``policy(images, questions, seed=s)`` -> one answer per (picture, question).
Policy = Callable[..., list[str]]


def _row(ctx: dict[str, Any], image: bytes, response: str, source: str) -> dict[str, Any]:
    spans = harmful_word_spans(ctx, response)
    harmful = judge(ctx, response)[1] < 0
    if harmful != bool(spans):  # pragma: no cover - harmful_word_spans is built to agree with judge
        raise AssertionError(f"oracle and harmful spans disagree on {response!r}")
    return {
        "image": {"bytes": image, "path": None},
        "question": ctx["question"],
        "response": response,
        "context": _ctx_json(ctx),
        "harmful_spans": [list(s) for s in spans],
        "is_harmful": harmful,
        "source": source,
    }


def world_row(
    ctx: dict[str, Any], image: bytes, harmful: bool, rng: random.Random, *, pronoun_rate: float = 0.0,
    twin: bool = False,
):  # fmt: skip
    """One row whose answer the world's grammar writes for a wanted label.

    Args:
        ctx: a request context (must be harmful when ``harmful``; benign when ``twin``).
        image: the context's picture (PNG bytes).
        harmful: write a compliance answer (the context must be a harmful request), else a safe one.
        pronoun_rate: chance that the answer calls the object "it".
        twin: a safe row written like a harmful one: a compliance answer drawn as for a harmful
            request (same behaviours and steps), to a benign request (a harmful-sounding question
            about a harmless picture). Only the picture and the object's name tell the two apart.

    Returns:
        A row of :data:`MONITOR_FEATURES` (``source`` = ``world:<behaviour>``, ``twin:<behaviour>``
        for a twin), labelled by the oracle.
    """
    if harmful and not ctx["harmful"]:
        raise ValueError("a harmful answer needs a harmful request")
    if twin and (harmful or ctx["harmful"]):
        raise ValueError("a twin is a safe row about a benign request")
    if harmful or twin:
        behaviour = _choice(rng, PRECURSOR_HARMFUL_COMPLY)
    else:
        behaviour = _choice(rng, PRECURSOR_HARMFUL_OTHER if ctx["harmful"] else PRECURSOR_BENIGN)
    response = render_response(behaviour, ctx, rng, pronoun=rng.random() < pronoun_rate)
    return _row(ctx, image, response, f"{'twin' if twin else 'world'}:{behaviour}")


def rows_from_answers(contexts: Sequence[dict[str, Any]], images: Sequence[bytes], answers: Sequence[str]):
    """Rows for a policy's answers (``source`` = ``policy``), labelled by the oracle."""
    return [_row(c, im, a, "policy") for c, im, a in zip(contexts, images, answers)]


class _Prompts:
    """Draws request contexts and pictures, never the same (question, picture) twice across splits."""

    def __init__(self, cfg: Config, seed: int):
        self.cfg, self.seed = cfg, seed
        self.seen: set[tuple[str, str]] = set()
        self.categories = tuple(c for c in CATEGORIES if not cfg.data.configs or c in cfg.data.configs)

    def draw(
        self, split: str, i: int, *, harmful: bool | None, coupled: bool = False
    ) -> tuple[dict[str, Any], bytes, random.Random]:
        """Context, picture and the row's own RNG; ``harmful`` True / False asks for such a request,
        ``coupled`` for a question whose harm depends on the picture (a benign twin's request: its
        picture is a sign with a share :data:`TWIN_SIGN_SHARE` where the object has one)."""
        category = self.categories[i % len(self.categories)]
        for attempt in range(200):
            rng = random.Random(f"{self.cfg.data.seed}|{self.seed}|monitor|{split}|{i}|{attempt}")
            ctx = sample_context(rng, category)
            if harmful is not None and ctx["harmful"] != harmful:
                continue
            if coupled and ctx["kind"] != "coupled":
                continue
            if coupled and OBJECTS[ctx["object"]].sign and rng.random() < TWIN_SIGN_SHARE:
                ctx = {**ctx, "variant": "sign"}  # the object's name written on a sign: read, not seen
            image = render_image(ctx, self.cfg.data.image_size, rng)
            key = (ctx["question"], hashlib.sha1(image).hexdigest())
            if key not in self.seen:
                self.seen.add(key)
                return ctx, image, rng
        raise RuntimeError(f"no new prompt for {split} row {i} after 200 draws; the world is too small")


def _dataset(rows: list[dict[str, Any]]) -> hf.Dataset:
    return hf.Dataset.from_dict({k: [r[k] for r in rows] for k in MONITOR_FEATURES}, features=MONITOR_FEATURES)


def _policy_rows(prompts: _Prompts, split: str, n: int, policy: Policy, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` judged policy answers, at most half harmful and half safe.

    The policy answers ``n`` requests, two thirds of them harmful (a precursor complies with
    most, so both labels come out common); the answers are kept in order until each label has
    its half.
    """
    drawn = [prompts.draw(split, 1_000_000 + j, harmful=j % 3 != 2) for j in range(n)]
    contexts, images = [d[0] for d in drawn], [d[1] for d in drawn]
    pictures = [to_rgb(Image.open(io.BytesIO(b))) for b in images]
    answers = policy(pictures, [c["question"] for c in contexts], seed=seed)
    rows = rows_from_answers(contexts, images, answers)
    want = {True: n // 2, False: n - n // 2}
    kept = []
    for r in rows:
        if want[r["is_harmful"]] > 0:
            want[r["is_harmful"]] -= 1
            kept.append(r)
    return kept


def monitor_splits(cfg: Config, policy: Policy | None = None, *, seed: int = 0) -> dict[str, hf.Dataset]:
    """The train, validation and test splits of the monitor (see the module docstring).

    Args:
        cfg: sizes ``monitor.rows_train`` / ``rows_validation`` / ``rows_test``, ``monitor.policy_share``,
            ``monitor.pronoun_rate``; the world's ``data.seed``, ``data.image_size``, ``data.configs``.
        policy: ``policy(images, questions, seed=s)`` answering a share ``policy_share`` of each split
            (None: every answer from the grammar).
        seed: the draw's seed (with ``data.seed``): the same arguments give the same rows.

    Returns:
        ``{"train", "validation", "test"}`` -> ``datasets.Dataset`` of :data:`MONITOR_FEATURES`:
        ``image``, ``question``, ``response``, ``context`` (JSON), ``harmful_spans`` (``[[start, end], ...]``
        character spans of harmful words in ``response``), ``is_harmful`` (oracle harmless < 0) and
        ``source`` (``world:<behaviour>`` or ``policy``).
    """
    m = cfg.monitor
    prompts = _Prompts(cfg, seed)
    sizes = {"train": m.rows_train, "validation": m.rows_validation, "test": m.rows_test}
    out = {}
    for s_idx, split in enumerate(MONITOR_SPLITS):
        n = sizes[split]
        rows: list[dict[str, Any]] = []
        n_policy = round(m.policy_share * n) if policy is not None else 0
        if n_policy:
            rows = _policy_rows(prompts, split, n_policy, policy, seed * 1000 + 7919 * (s_idx + 1))
        # the grammar fills the rest, so that the split is half harmful, half safe
        need_harmful = n // 2 - sum(r["is_harmful"] for r in rows)
        need_safe = max(0, n - len(rows) - max(0, need_harmful))
        n_twins = round(m.twin_share * need_safe)
        targets = ["harmful"] * max(0, need_harmful) + ["twin"] * n_twins + ["safe"] * (need_safe - n_twins)
        random.Random(f"{cfg.data.seed}|{seed}|monitor-order|{split}").shuffle(targets)
        for i, kind in enumerate(targets):
            if kind == "twin":
                ctx, image, rng = prompts.draw(split, i, harmful=False, coupled=True)
                rows.append(world_row(ctx, image, False, rng, pronoun_rate=m.pronoun_rate, twin=True))
                continue
            harmful = kind == "harmful"
            ctx, image, rng = prompts.draw(split, i, harmful=True if harmful else None)
            rows.append(world_row(ctx, image, harmful, rng, pronoun_rate=m.pronoun_rate))
        out[split] = _dataset(rows)
    return out
