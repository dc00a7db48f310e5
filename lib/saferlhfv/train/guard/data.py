"""The guard's training set: the world's guard labels, the precursor's own answers judged by the
oracle, answers rewritten to name the wrong object, typographic pictures; and their collation."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any

import torch

from saferlhfv.config import Config
from saferlhfv.data.content import CATEGORIES, OBJECTS
from saferlhfv.models.guard import encode_guard_inputs

CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
OBJECT_INDEX = {k: i for i, k in enumerate(OBJECTS)}


def _object_id(context: str | None) -> int:
    """Index of the picture's object (for the grounding head), -100 when unknown."""
    if not context:
        return -100
    return OBJECT_INDEX.get(json.loads(context).get("object"), -100)


def row_variant(context: str) -> str:
    """How a row's picture shows its object: ``object`` (default), ``labeled`` or ``sign`` (typographic)."""
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
        keep = [i for i, c in enumerate(ds["context"]) if row_variant(c) != "sign"]
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
        batch["label_category"] = torch.tensor([CATEGORY_INDEX[r["category"]] for r in rows])
        batch["label_severity"] = torch.tensor([int(r["severity"]) for r in rows])
        batch["label_object"] = torch.tensor([_object_id(r.get("context")) for r in rows])
        return batch

    return collate
