"""Measurements of the mini world: image-text coupling and the dataset statistics of the pipeline's
``data`` stage."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

from saferlhfv.config import DataConfig
from saferlhfv.data.content import (
    CATEGORY_SPECS,
    QUESTIONS,
    SEVERITY_NAMES,
    fill,
)
from saferlhfv.data.oracle import analyse, judge
from saferlhfv.data.world.datasets import (
    _pair_records,
    guard_dataset,
    preference_pairs,
    rl_prompts,
    sft_dataset,
    text_corpus,
)
from saferlhfv.data.world.grammar import SPLITS


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
