"""Small computations behind the data-exploration notebook (01): counts, rate tables, coupling, noise.

Pure functions over a paired dataset (any source in the hub schema) or a
:class:`~saferlhfv.config.DataConfig` (for what needs the mini world's oracle).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from typing import Any

import numpy as np
from datasets import Dataset

from saferlhfv.config import DataConfig
from saferlhfv.data.content import CATEGORIES, CATEGORY_SPECS, QUESTIONS, fill
from saferlhfv.data.images import draw_object_image
from saferlhfv.data.oracle import judge

__all__ = [
    "category_counts",
    "severity_counts",
    "rate_matrix",
    "tension",
    "coupling_examples",
    "noise_sweep",
]


def category_counts(ds: Dataset) -> dict[str, int]:
    """Records per category, in the hub's category order."""
    c = Counter(ds["category"])
    return {k: c.get(k, 0) for k in CATEGORIES}


def severity_counts(ds: Dataset) -> dict[str, dict[int, int]]:
    """``{"image_severity": {level: n}, "request_severity": {level: n}}``; the second needs a ``context`` column."""
    out = {"image_severity": dict(sorted(Counter(ds["image_severity"]).items()))}
    if "context" in ds.column_names:
        out["request_severity"] = dict(sorted(Counter(json.loads(c)["severity"] for c in ds["context"]).items()))
    return out


def rate_matrix(ds: Dataset) -> np.ndarray:
    """Counts of responses by (helpful rate 0..3, harmless rate -3..3): an int array of shape [4, 7]
    (row = helpful rate, column = harmless rate + 3), both responses of every pair."""
    m = np.zeros((4, 7), dtype=int)
    for k in (1, 2):
        for h, s in zip(ds[f"response_{k}_helpful_rate"], ds[f"response_{k}_harmless_rate"]):
            m[h, s + 3] += 1
    return m


def tension(ds: Dataset) -> dict[str, Any]:
    """How often the more helpful response is *not* the safer one, overall and per category.

    Returns:
        ``{"overall": share, "per_category": {category: share}, "both_safe": share of pairs where both
        responses are safe, "both_unsafe": ...}``.
    """
    diff = [a != b for a, b in zip(ds["more_helpful_response_id"], ds["safer_response_id"])]
    per: dict[str, list[bool]] = {}
    for c, d in zip(ds["category"], diff):
        per.setdefault(c, []).append(d)
    s1, s2 = ds["is_response_1_safe"], ds["is_response_2_safe"]
    safe = [(str(a) == "True", str(b) == "True") for a, b in zip(s1, s2)]
    n = max(1, len(diff))
    return {
        "overall": round(sum(diff) / n, 4),
        "per_category": {c: round(float(np.mean(per[c])), 4) for c in CATEGORIES if c in per},
        "both_safe": round(sum(a and b for a, b in safe) / n, 4),
        "both_unsafe": round(sum(not a and not b for a, b in safe) / n, 4),
    }


def coupling_examples(n: int = 4, *, size: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """Coupled questions shown with a benign and a harmful picture and one fixed compliance answer.

    Returns:
        ``n`` dicts with ``question``, ``benign`` and ``harmful`` (each ``{"object", "image" (PIL),
        "response", "rates" (helpful, harmless)}``; the two responses are the same steps, each naming its
        picture's object).
    """
    rng = random.Random(seed)
    coupled = [q for q in QUESTIONS.values() if q.kind == "coupled"]
    out = []
    for q in rng.sample(coupled, n):
        spec = CATEGORY_SPECS[q.category]
        good, bad = rng.choice(q.benign), rng.choice(list(q.harmful))
        ex = {"question": q.text}
        for key, obj, harmful in (("benign", good, False), ("harmful", bad, True)):
            # the same answer (the same steps), naming what the picture shows
            response = "first " + ", then ".join(fill(st, obj) for st in spec.steps[:2]) + "."
            ctx = {"category": q.category, "kind": "coupled", "object": obj, "harmful": harmful,
                   "severity": q.harmful.get(obj, 0)}  # fmt: skip
            ex[key] = {
                "object": obj,
                "image": draw_object_image(obj, "object", size, random.Random(f"{seed}|{q.qid}|{obj}")),
                "response": response,
                "rates": judge(ctx, response),
            }
        out.append(ex)
    return out


def noise_sweep(cfg: DataConfig, levels=(0.0, 0.1, 0.2, 0.3), split: str = "train") -> list[dict[str, float]]:
    """Regenerate the mini world's pairs at several annotator-noise rates and measure the labels.

    Returns:
        One dict per level: ``label_noise``, ``disagreement`` (share of labels on pairs with unequal rates that
        contradict the rates), ``helpful_ne_safer`` and ``rate_rule_accuracy`` (accuracy of "prefer the higher
        rate" against the labels: the ceiling a perfect reward / cost model can reach on these labels).
    """
    from saferlhfv.data.world import preference_pairs

    rows = []
    for level in levels:
        ds = preference_pairs(dataclasses.replace(cfg, label_noise=float(level)), split)
        agree = n = 0
        for rate, lab in (("helpful", "more_helpful_response_id"), ("harmless", "safer_response_id")):
            for a, b, y in zip(ds[f"response_1_{rate}_rate"], ds[f"response_2_{rate}_rate"], ds[lab]):
                if a != b:
                    n += 1
                    agree += y == ("1" if a > b else "2")
        rows.append({
            "label_noise": float(level),
            "disagreement": round(1 - agree / max(1, n), 4),
            "helpful_ne_safer": tension(ds)["overall"],
            "rate_rule_accuracy": round(agree / max(1, n), 4),
        })  # fmt: skip
    return rows
