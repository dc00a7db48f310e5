"""BeaverTails-V-mini: the datasets later stages read, their sizes, labels and invariants."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time

import numpy as np
import pytest
from datasets import Image as ImageFeature
from PIL import Image

from saferlhfv.config import DataConfig
from saferlhfv.data.content import CATEGORIES, OBJECTS
from saferlhfv.data.images import draw_object_image
from saferlhfv.data.oracle import analyse, judge
from saferlhfv.data.schema import check_record
from saferlhfv.data.world import (
    BEHAVIOUR_TYPES,
    dataset_statistics,
    guard_dataset,
    preference_pairs,
    rl_prompts,
    sft_dataset,
    text_corpus,
)

CFG = DataConfig()


def test_generating_the_whole_tiny_world_is_fast():
    cfg = DataConfig(seed=12345)  # not cached yet
    t0 = time.perf_counter()
    for split in ("train", "evaluation"):
        preference_pairs(cfg, split), rl_prompts(cfg, split), guard_dataset(cfg, split)
    sft_dataset(cfg)
    assert time.perf_counter() - t0 < 30


def test_preference_pairs_follow_the_schema_and_the_oracle():
    ds = preference_pairs(CFG, "train")
    assert len(ds) == 20 * CFG.pairs_per_category_train
    assert isinstance(ds.features["image"], ImageFeature)
    raw = ds.cast_column("image", ImageFeature(decode=False))
    for row in raw.select(range(0, len(ds), 7)):
        assert check_record(row) == []
        assert judge(row["context"], row["response_1"]) == (
            row["response_1_helpful_rate"],
            row["response_1_harmless_rate"],
        )
    # annotator noise: labels disagree with unequal rates about label_noise of the time
    stats = dataset_statistics(CFG)
    assert abs(stats["label_disagreement"]["train"] - CFG.label_noise) < 0.05
    noiseless = preference_pairs(DataConfig(label_noise=0.0, pairs_per_category_train=10), "train")
    for r in noiseless:
        if r["response_1_helpful_rate"] != r["response_2_helpful_rate"]:
            better = "1" if r["response_1_helpful_rate"] > r["response_2_helpful_rate"] else "2"
            assert r["more_helpful_response_id"] == better


def test_the_tension_helpful_vs_safer_is_present():
    stats = dataset_statistics(CFG)
    assert 0.25 < stats["helpful_ne_safer"]["train"] < 0.75


def test_rl_prompts_are_disjoint_and_carry_the_context():
    train, ev = rl_prompts(CFG, "train"), rl_prompts(CFG, "evaluation")
    assert len(train) == 20 * CFG.prompts_per_category_train and len(ev) == 20 * CFG.prompts_per_category_eval
    for col in ("image", "question", "category", "image_severity", "context"):
        assert col in train.column_names

    def keys(ds):
        raw = ds.cast_column("image", ImageFeature(decode=False))
        return {(q, hashlib.sha1(i["bytes"]).hexdigest()) for q, i in zip(raw["question"], raw["image"])}

    assert not keys(train) & keys(ev)
    ctx = [json.loads(c) for c in train["context"]]
    assert all(c["harmful"] == h and c["severity"] == s for c, h, s in zip(ctx, train["is_harmful"], train["severity"]))
    share = np.mean(train["is_harmful"])
    assert 0.45 < share < 0.7
    assert set(train["category"]) == set(CATEGORIES)


def test_sft_mixture_is_grounded_and_measurably_unsafe():
    sft = sft_dataset(CFG)
    assert len(sft) == 20 * CFG.sft_per_category
    assert set(sft["behaviour"]) <= set(BEHAVIOUR_TYPES)
    captions = [(c, r) for c, r, b in zip(sft["context"], sft["response"], sft["behaviour"]) if b == "caption"]
    assert 0.15 < len(captions) / len(sft) < 0.35
    for c, r in captions:
        assert OBJECTS[json.loads(c)["object"]].name in r and judge(c, r)[0] == 3
    harmful = [(c, r) for c, r, h in zip(sft["context"], sft["response"], sft["is_harmful"]) if h]
    safety = np.mean([analyse(c, r).is_safe for c, r in harmful])
    assert 0.2 < safety < 0.5  # the precursor complies with most harmful requests
    benign = [(c, r) for c, r, h, b in zip(sft["context"], sft["response"], sft["is_harmful"], sft["behaviour"])
              if not h and b != "caption"]  # fmt: skip
    assert np.mean([judge(c, r)[0] >= 1 for c, r in benign]) > 0.85
    # compliance names the object in the picture
    comp = [(c, r) for c, r, b in zip(sft["context"], sft["response"], sft["behaviour"]) if "compliance" in b]
    assert np.mean([OBJECTS[json.loads(c)["object"]].name in r for c, r in comp]) > 0.95


def test_responses_are_short():
    sft = sft_dataset(CFG)
    assert max(len(r.split()) for r in sft["response"]) <= 26


@pytest.mark.parametrize("split", ["train", "evaluation"])
def test_guard_labels(split):
    g = guard_dataset(CFG, split)
    n = CFG.guard_per_category_train if split == "train" else CFG.guard_per_category_eval
    assert len(g) == 2 * 20 * n
    assert set(g["mode"]) == {"input", "output"}
    assert set(g["category"]) == set(CATEGORIES)
    for row in g.select_columns(["response", "mode", "is_unsafe", "severity", "context"]):
        c = json.loads(row["context"])
        assert 0 <= row["severity"] <= 3
        if row["mode"] == "input":
            assert row["response"] == "" and row["is_unsafe"] == c["harmful"] and row["severity"] == c["severity"]
        else:
            harmless = judge(c, row["response"])[1]
            assert row["is_unsafe"] == (harmless < 0) and row["severity"] == max(0, -harmless)
        assert row["is_unsafe"] == (row["severity"] > 0)
    out = [u for u, m in zip(g["is_unsafe"], g["mode"]) if m == "output"]
    assert 0.2 < np.mean(out) < 0.6


def test_text_corpus_covers_everything_with_a_small_vocabulary():
    corpus = text_corpus(CFG)
    words = {w for s in corpus for w in re.findall(r"[a-z0-9]+", s.lower())}
    assert 300 <= len(words) <= 600
    produced = set()
    for ds in (sft_dataset(CFG), preference_pairs(CFG, "evaluation")):
        cols = ["question", "response"] if "response" in ds.column_names else ["question", "response_1", "response_2"]
        for col in cols:
            produced |= {w for s in ds[col] for w in re.findall(r"[a-z0-9]+", s.lower())}
    assert produced <= words, produced - words


def test_dataset_statistics_are_json_serialisable():
    stats = dataset_statistics(CFG)
    again = json.loads(json.dumps(stats))
    assert again["sizes"]["train"]["pairs"] == 20 * CFG.pairs_per_category_train
    assert sum(again["pairs_per_category"].values()) == again["sizes"]["train"]["pairs"]
    assert again["coupling"]["rate"] >= 0.6
    assert again["text_only_ceiling"] < 0.85  # a model ignoring the picture cannot tell harmful from benign
    assert 0.2 < again["precursor_safety_rate_harmful"] < 0.5


def test_configs_and_sizes_come_from_the_config():
    cfg = DataConfig(configs=["horror_and_gore"], pairs_per_category_train=3, prompts_per_category_train=2,
                     sft_per_category=4, guard_per_category_train=2, image_size=32)  # fmt: skip
    assert len(preference_pairs(cfg)) == 3 and len(rl_prompts(cfg)) == 2
    assert len(sft_dataset(cfg)) == 4 and len(guard_dataset(cfg)) == 4
    assert set(preference_pairs(cfg)["category"]) == {"horror_and_gore"}
    assert rl_prompts(cfg)[0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="unknown category"):
        preference_pairs(DataConfig(configs=["cooking"]))


def test_objects_look_different():
    """Mean colours of the objects (drawn alone, 48 px) are spread out: a small vision tower can separate them."""
    means = {}
    for key in OBJECTS:
        imgs = [draw_object_image(key, "object", 48, random.Random(i)) for i in range(4)]
        means[key] = np.mean([np.asarray(im.convert("RGB"), dtype=float) for im in imgs], axis=0)
    keys = list(means)
    # pixel-wise distance between average pictures of every pair of objects
    dists = [np.abs(means[a] - means[b]).mean() for i, a in enumerate(keys) for b in keys[i + 1 :]]
    assert min(dists) > 4.0, min(dists)


def test_typographic_variants_draw_the_sign_word():
    a = draw_object_image("pills", "sign", 64, random.Random(0))
    b = draw_object_image("candy", "sign", 64, random.Random(0))
    assert isinstance(a, Image.Image) and a.size == (64, 64)
    assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 1.0
    with pytest.raises(ValueError, match="no sign word"):
        draw_object_image("syringe", "sign", 64, random.Random(0))


def test_perturbed_pairs_are_labelled_by_the_oracle():
    from saferlhfv.data.schema import PAIR_FIELDS
    from saferlhfv.data.world import PERTURBATIONS, perturbed_pairs

    cfg = DataConfig(pairs_per_category_train=3, label_noise=0.0)
    ds = perturbed_pairs(cfg, 1.0, "train")
    assert 0 < len(ds) <= 60 and set(PAIR_FIELDS) <= set(ds.column_names)
    kinds = {r["response_2_from"].removeprefix("perturbed:") for r in ds}
    assert kinds <= set(PERTURBATIONS) and len(kinds) >= 3
    worse = 0
    for r in ds:
        h2, s2 = judge(r["context"], r["response_2"])
        assert (h2, s2) == (r["response_2_helpful_rate"], r["response_2_harmless_rate"])
        if h2 < r["response_1_helpful_rate"]:  # no label noise: the better answer is the preferred one
            worse += 1
            assert r["more_helpful_response_id"] == "1"
    assert worse >= len(ds) // 2  # most damage costs helpfulness in the oracle's eyes


def test_the_world_writes_every_field_of_the_hub_schema():
    from saferlhfv.data.schema import PAIR_FIELDS, pair_features

    assert set(PAIR_FIELDS) <= set(pair_features(with_context=True))
    assert set(PAIR_FIELDS) <= set(preference_pairs(DataConfig(), "evaluation").column_names)
