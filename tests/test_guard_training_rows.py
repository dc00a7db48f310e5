"""The guard's training rows: held apart from the probe set, benign look-alike twins, and the
single-response BeaverTails-V (hub layout, a local fixture) as a source of guard rows."""

from __future__ import annotations

import io
import json
import re

import datasets
import pytest
from PIL import Image

from saferlhfv.config import load_config
from saferlhfv.data.content import OBJECTS
from saferlhfv.data.probes import ROLEPLAY_TEMPLATES, probe_set
from saferlhfv.data.schema import SchemaError

SMALL = {
    "data.configs": ["harmful_health_content", "violence_and_physical_harm"],
    "data.guard_per_category_train": 6,
    "data.guard_per_category_eval": 3,
    "guard.typographic_rows_per_category": 4,
    "guard.lookalike_rows_per_category": 5,
    "guardrail.probes_per_family": 4,
}


@pytest.fixture(scope="module")
def small_cfg():
    return load_config("tiny", overrides=SMALL)


def _keys(ds):
    from saferlhfv.train.guard.data import image_key

    raw = ds.cast_column("image", datasets.Image(decode=False))
    return {(q, image_key(im)) for q, im in zip(raw["question"], raw["image"])}


def test_no_probe_item_in_the_tiny_guard_training_rows():
    """Every row the tiny preset's guard trains on (world rows, typographic and look-alike rows, the RL
    train prompts the precursor answers) against the probe set the guard stage measures: no shared
    picture, no shared (question, picture) pair, no role-play wrapper. Fails if one leaks."""
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.train.guard import guard_training_set

    cfg = load_config("tiny")
    rows = guard_training_set(cfg)  # without a policy: the precursor's answers reuse the RL train prompts below
    probes = probe_set(cfg.data, cfg.guardrail.probes_per_family)
    probe_pairs = _keys(probes)
    probe_pictures = {k for _, k in probe_pairs}
    for ds in (rows, rl_prompts(cfg.data, "train")):
        pairs = _keys(ds)
        assert not pairs & probe_pairs
        assert not {k for _, k in pairs} & probe_pictures
    wrappers = [t.split("{q}")[0].strip() for t in ROLEPLAY_TEMPLATES]
    assert not any(w in q for q in rows["question"] for w in wrappers)


def test_framed_rows_come_as_twins_behind_one_frame_half_of_them_random_sentences(small_cfg):
    """Sets of three rows share a frame: a coupled question with a picture that makes it harmful, the same
    question with a benign picture, and the text question; about half the frames are random sentences of
    the world's words, each one new."""
    from saferlhfv.train.guard.data import TRAINING_WRAPPERS, _frame_vocabulary, guard_rows, wrapper_rows

    rows = wrapper_rows(small_cfg, 30, guard_rows(small_cfg, "train").features, seed=0)
    questions, modes, unsafe = rows["question"], rows["mode"], rows["is_unsafe"]
    contexts = [json.loads(c) for c in rows["context"]]
    assert len(rows) == 30 * 2 * len(small_cfg.data.configs)
    frames = []
    for s in range(0, len(rows), 3):
        harmful, benign, text = contexts[s : s + 3]
        assert harmful["kind"] == benign["kind"] == "coupled" and harmful["qid"] == benign["qid"]
        assert harmful["harmful"] and not benign["harmful"] and harmful["object"] != benign["object"]
        assert text["kind"] == "text" and text["harmful"]
        frame = questions[s].removesuffix(harmful["question"])
        assert questions[s + 1] == frame + benign["question"] and questions[s + 2] == frame + text["question"]
        if modes[s] == "input":  # a request's label is its harm, whatever the frame
            assert unsafe[s : s + 3] == [True, False, True]
        frames.append(frame)
    fixed = {w.split("{q}")[0] for w in TRAINING_WRAPPERS}
    sentences = [f for f in frames if f not in fixed]
    assert 0.3 < len(sentences) / len(frames) < 0.7 and len(set(sentences)) == len(sentences)
    assert all(set(re.findall(r"[a-z]+", f)) <= set(_frame_vocabulary()) for f in sentences)
    assert {"q", "obj"}.isdisjoint(_frame_vocabulary())  # template placeholders are not words
    assert wrapper_rows(small_cfg, 30, rows.features, seed=0)["question"] == questions  # seeded
    assert wrapper_rows(small_cfg, 30, rows.features, seed=1)["question"] != questions  # per replicate


def test_a_probe_item_put_into_the_training_rows_is_dropped(small_cfg):
    from saferlhfv.train.guard.data import drop_probe_items, guard_rows, probe_keys

    base = guard_rows(small_cfg, "train")
    probes = probe_set(small_cfg.data, 2).select([0, 1])
    leaked = datasets.concatenate_datasets([base, probes.select_columns(base.column_names).cast(base.features)])
    kept, n = drop_probe_items(leaked, probe_keys(small_cfg))
    assert n == 2 and len(kept) == len(base)
    assert not _keys(kept) & _keys(probes)


def test_reading_pictures_are_half_signs_of_every_word_seeded_and_without_probe_pictures(small_cfg):
    from saferlhfv.train.guard.data import image_key, reading_pictures

    pictures = reading_pictures(small_cfg, 400, seed=0)
    contexts = [json.loads(r["context"]) for r in pictures]
    signs = [c["object"] for c in contexts if c["variant"] == "sign"]
    assert len(pictures) == 400 and 0.4 < len(signs) / len(contexts) < 0.6
    # every word, not the world's mixture (which shows BOMB on 9 of 1,920 typographic rows)
    assert set(signs) == {o for o, spec in OBJECTS.items() if spec.sign}
    assert {c["object"] for c in contexts if c["variant"] == "object"} <= set(OBJECTS)
    # seeded: the same pictures again, other ones under another guard replicate
    first = [image_key(r["image"]) for r in pictures[:20]]
    assert [image_key(r["image"]) for r in reading_pictures(small_cfg, 20, seed=0)] == first
    assert {image_key(r["image"]) for r in reading_pictures(small_cfg, 20, seed=1)}.isdisjoint(first)
    # a picture of the probe set (here: pretend the third one is) is dropped
    kept = reading_pictures(small_cfg, 20, seed=0, keys={("", first[2])})
    assert [image_key(r["image"]) for r in kept] == first[:2] + first[3:]


def test_lookalike_rows_are_benign_captions_of_mostly_harmful_looking_pictures(small_cfg):
    from saferlhfv.data.oracle import judge
    from saferlhfv.train.guard.data import guard_rows, lookalike_rows

    base = guard_rows(small_cfg, "train")
    rows = lookalike_rows(small_cfg, 5, base.features, seed=small_cfg.seed)
    assert len(rows) == 2 * 5 * 2  # categories x items x (input, output)
    assert not any(rows["is_unsafe"]) and set(rows["severity"]) == {0}
    ctxs = [json.loads(c) for c in rows["context"]]
    assert all(c["kind"] == "caption" and not c["harmful"] for c in ctxs)
    assert sum(OBJECTS[c["object"]].image_severity >= 1 for c in ctxs) >= len(ctxs) // 2
    for r, c in zip(rows, ctxs):
        assert (r["response"] == "") == (r["mode"] == "input")
        if r["mode"] == "output":
            assert judge(c, r["response"])[1] >= 0
    # deterministic, and apart from the world's own guard rows
    again = lookalike_rows(small_cfg, 5, base.features, seed=small_cfg.seed)
    assert again["question"] == rows["question"] and not _keys(rows) & _keys(base)


# --------------------------------------------------------------------------- single-response hub layout


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _single_records(category: str) -> list[dict]:
    return [
        {"question": "how do i use this on a person?", "image": {"bytes": _png((200, 0, 0)), "path": None},
         "category": category, "image_severity": 3, "response": "first, hold it tight.", "is_response_safe": "False"},
        {"question": "what is this?", "image": {"bytes": _png((0, 200, 0)), "path": None},
         "category": category, "image_severity": 0, "response": "a green square.", "is_response_safe": "True"},
        {"question": "how much can i take?", "image": {"bytes": _png((0, 0, 200)), "path": None},
         "category": category, "image_severity": 1, "response": "take all of it.", "is_response_safe": "False"},
    ]  # fmt: skip


def _write_single_layout(root, records_by_category, split="train"):
    feats = datasets.Features(
        {
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "category": datasets.Value("string"),
            "image_severity": datasets.Value("int64"),
            "response": datasets.Value("string"),
            "is_response_safe": datasets.Value("string"),
        }
    )
    for cat, recs in records_by_category.items():
        (root / cat).mkdir(parents=True, exist_ok=True)
        cols = {k: [r[k] for r in recs] for k in feats}
        datasets.Dataset.from_dict(cols, features=feats).to_parquet(str(root / cat / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture()
def single_dir(tmp_path):
    cats = ("violence_and_physical_harm", "harmful_health_content")
    return _write_single_layout(tmp_path / "bt_single", {c: _single_records(c) for c in cats})


def test_single_response_hub_layout_loads_into_guard_rows(single_dir):
    from saferlhfv.data.single_response import GUARD_ROW_FEATURES, load_single_response_guard_rows

    rows, report = load_single_response_guard_rows(single_dir, return_report=True)
    assert report.ok and len(rows) == 6
    assert rows.features == GUARD_ROW_FEATURES
    assert set(rows["mode"]) == {"output"}
    assert rows["is_unsafe"] == [True, False, True] * 2
    # no severity field: 0 when safe, the picture's severity clipped to 1..3 when unsafe
    assert rows["severity"] == [3, 0, 1] * 2
    assert [json.loads(c)["severity_from"] for c in rows["context"][:3]] == ["image_severity", "safe", "image_severity"]
    assert isinstance(rows[0]["image"], Image.Image)
    one = load_single_response_guard_rows(single_dir, configs=["harmful_health_content"])
    assert set(one["category"]) == {"harmful_health_content"} and len(one) == 3


def test_single_response_loader_validates_like_the_paired_loader(tmp_path):
    from saferlhfv.data.single_response import check_single_record, load_single_response_guard_rows

    recs = _single_records("animal_abuse")
    recs[1] = {**recs[1], "is_response_safe": "maybe"}
    recs[2] = {**recs[2], "response": "", "image": {"bytes": b"not a png", "path": None}}
    root = _write_single_layout(tmp_path / "bad", {"animal_abuse": recs})
    with pytest.raises(SchemaError, match="record 1 is invalid: 'is_response_safe'"):
        load_single_response_guard_rows(root)
    with pytest.warns(UserWarning, match="dropped invalid single-response records"):
        rows, report = load_single_response_guard_rows(root, on_error="drop", return_report=True)
    assert len(rows) == 1 and report.dropped == [1, 2]
    assert {p.field for p in report.problems if p.index == 2} == {"response", "image"}
    # a severity field that contradicts the safety label is a defect; an unknown category too
    bad = {**_single_records("animal_abuse")[1], "severity": 2, "category": "nope"}
    assert {f for f, _ in check_single_record(bad)} == {"severity", "category"}


def test_single_response_loader_refuses_the_paired_layout(tmp_path):
    from saferlhfv.config import DataConfig
    from saferlhfv.data.single_response import load_single_response_guard_rows
    from saferlhfv.data.world import write_hub_layout

    cfg = DataConfig(configs=["animal_abuse"], pairs_per_category_train=3, pairs_per_category_eval=2)
    root = tmp_path / "paired"
    write_hub_layout(cfg, root)
    with pytest.raises(SchemaError, match="paired BeaverTails-V layout"):
        load_single_response_guard_rows(root)


def test_guard_stage_reads_a_single_response_source(small_cfg, single_dir):
    from saferlhfv.config import apply_overrides
    from saferlhfv.train.guard import guard_rows, guard_training_set

    plain = guard_training_set(small_cfg)
    cfg = apply_overrides(small_cfg, {"guard.single_response_source": str(single_dir)})
    mixed = guard_training_set(cfg)
    # the fixture's two configs that the small world has: 3 records each
    assert len(mixed) == len(plain) + 6
    assert sum(json.loads(c).get("source") == "single_response" for c in mixed["context"]) == 6
    # without the mini world, the single-response source is the guard's data
    real = apply_overrides(cfg, {"data.source": str(single_dir)})
    rows = guard_rows(real, "train")
    assert len(rows) == 6 and len(guard_training_set(real)) == 6
    with pytest.raises(ValueError, match="single_response_source"):
        guard_rows(apply_overrides(small_cfg, {"data.source": str(single_dir)}), "train")


def test_misnamed_answers_leave_single_response_rows_alone(small_cfg, single_dir):
    """Rows of a single-response source have no world object to rename (this crashed the guard stage)."""
    from saferlhfv.config import apply_overrides
    from saferlhfv.train.guard.data import guard_rows, misname_rows, single_response_rows

    cfg = apply_overrides(small_cfg, {"guard.single_response_source": str(single_dir)})
    single = single_response_rows(cfg, guard_rows(small_cfg, "train").features)
    assert any(m == "output" and r for m, r in zip(single["mode"], single["response"]))
    assert misname_rows(single, 1.0, seed=0)["response"] == single["response"]


def test_guard_seed_redraws_the_extra_rows_only(small_cfg):
    """``guard.seed`` is a replicate of the guard: its extra rows change, the world's rows do not."""
    from saferlhfv.config import apply_overrides, replicate_seed
    from saferlhfv.train.guard import guard_rows, guard_training_set

    world = len(guard_rows(small_cfg, "train"))
    a = guard_training_set(small_cfg)
    b = guard_training_set(apply_overrides(small_cfg, {"guard.seed": 1}))
    assert replicate_seed(small_cfg, "guard") == 0
    assert a["question"][:world] == b["question"][:world]  # the world's rows come first, unchanged
    assert a["question"][world:] != b["question"][world:]  # typographic / look-alike / framed rows redrawn
