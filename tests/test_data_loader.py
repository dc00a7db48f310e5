"""load_beavertails_v: the shipped mini world, local hub-layout folders and files, the offline hub."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from saferlhfv.config import DataConfig, load_config
from saferlhfv.data import (
    BeaverTailsUnavailableError,
    SchemaError,
    load_beavertails_v,
    load_preference_data,
)
from saferlhfv.data.beavertails import mini_dir
from saferlhfv.data.content import CATEGORIES
from saferlhfv.data.schema import PAIR_FIELDS
from saferlhfv.data.world import write_hub_layout

SMALL = DataConfig(configs=["animal_abuse", "sexual_crimes"], pairs_per_category_train=6, pairs_per_category_eval=3)


def test_shipped_mini_world_loads_with_zero_bad_records():
    assert mini_dir().is_dir(), "data/beavertails_v_mini is missing: run python -m saferlhfv.data.world --preset tiny"
    cfg = load_config("tiny").data
    for split, per_cat in (("train", cfg.pairs_per_category_train), ("evaluation", cfg.pairs_per_category_eval)):
        ds, report = load_beavertails_v("mini", split=split, return_report=True)
        assert report.ok and report.n_records == len(ds) == 20 * per_cat
        assert ds.column_names == [*PAIR_FIELDS, "context"]
        assert set(ds["category"]) == set(CATEGORIES)
        assert isinstance(ds[0]["image"], Image.Image)
        assert ds[0]["image"].size == (cfg.image_size, cfg.image_size)


def test_shipped_copy_is_what_the_generator_writes_today(tmp_path):
    """The committed data is the tiny preset's world (regenerate it after changing the world).

    Texts and labels must match exactly; pictures up to tiny pixel differences, so that another Pillow /
    zlib build (different PNG bytes, same picture) does not fail the check.
    """
    write_hub_layout(load_config("tiny").data, tmp_path)
    shipped = sorted(p.relative_to(mini_dir()) for p in mini_dir().rglob("*") if p.is_file())
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == fresh
    for split in ("train", "evaluation"):
        a, b = load_beavertails_v(mini_dir(), split=split), load_beavertails_v(tmp_path, split=split)
        texts = [c for c in a.column_names if c != "image"]
        assert a.select_columns(texts).to_list() == b.select_columns(texts).to_list(), "regenerate the mini world"
        for x, y in zip(a["image"], b["image"]):
            diff = np.abs(np.asarray(x, dtype=float) - np.asarray(y, dtype=float)).mean()
            assert diff < 2.0, f"pictures differ (mean |diff| {diff:.2f}): regenerate the mini world"


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files_a, files_b = write_hub_layout(SMALL, a), write_hub_layout(SMALL, b)
    assert [p.relative_to(a) for p in files_a] == [p.relative_to(b) for p in files_b]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(files_a, files_b))
    other = write_hub_layout(dataclasses.replace(SMALL, seed=1), tmp_path / "c")
    assert files_a[0].read_bytes() != other[0].read_bytes()


def test_loader_reads_a_locally_written_hub_layout(tmp_path):
    write_hub_layout(SMALL, tmp_path)
    assert (tmp_path / "animal_abuse" / "train-00000-of-00001.parquet").is_file()
    train = load_beavertails_v(tmp_path)
    assert len(train) == 12 and set(train["category"]) == {"animal_abuse", "sexual_crimes"}
    ev = load_beavertails_v(str(tmp_path), configs=["sexual_crimes"], split="evaluation")
    assert len(ev) == 3 and set(ev["category"]) == {"sexual_crimes"}
    one = load_beavertails_v(tmp_path / "animal_abuse" / "train-00000-of-00001.parquet")
    assert len(one) == 6
    # the generator's in-memory data equals what the files hold
    mem = load_beavertails_v("mini", split="evaluation", cfg=SMALL)
    assert mem["response_1"] == load_beavertails_v(tmp_path, split="eval")["response_1"]
    with pytest.raises(BeaverTailsUnavailableError, match="no folder for config"):
        load_beavertails_v(tmp_path, configs=["horror_and_gore"])


def test_loader_reads_jsonl_with_image_files(tmp_path):
    ds = load_beavertails_v("mini", split="evaluation", cfg=SMALL)
    folder = tmp_path / "data" / "animal_abuse"
    folder.mkdir(parents=True)
    with open(folder / "evaluation.jsonl", "w") as fh:
        for i, row in enumerate(ds.select(range(3))):
            name = f"img_{i}.png"
            row["image"].save(folder / name)
            row["image"] = name  # a path relative to the json file
            fh.write(json.dumps(row) + "\n")
    back = load_beavertails_v(tmp_path, split="evaluation")
    assert len(back) == 3 and back["question"] == ds["question"][:3]
    assert back[0]["image"].size == ds[0]["image"].size


def test_drop_mode_on_a_corrupted_copy(tmp_path):
    ds = load_beavertails_v("mini", split="train", cfg=SMALL)
    rows = [dict(r) for r in ds.select(range(4))]
    for r in rows:
        buf = io.BytesIO()
        r["image"].save(buf, format="PNG")
        r["image"] = {"bytes": buf.getvalue(), "path": None}
    rows[1]["image"] = {"bytes": b"garbage", "path": None}
    rows[2]["more_helpful_response_id"] = "0"
    import pyarrow.parquet as pq
    from datasets import Dataset

    folder = tmp_path / "animal_abuse"
    folder.mkdir()
    pq.write_table(Dataset.from_list(rows, features=ds.features).data.table, folder / "train-0.parquet")
    with pytest.raises(SchemaError, match="record 1"):
        load_beavertails_v(tmp_path)
    with pytest.warns(UserWarning, match="2 of 4 records are invalid"):
        kept, report = load_beavertails_v(tmp_path, on_error="drop", return_report=True)
    assert len(kept) == 2 and report.dropped == [1, 2]


def test_offline_hub_id_names_the_mini_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BeaverTailsUnavailableError, match="source='mini'"):
        load_beavertails_v("saferlhf-v/BeaverTails-V", configs=["animal_abuse"])


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown BeaverTails-V config"):
        load_beavertails_v("mini", configs=["cooking"])
    with pytest.raises(ValueError, match="unknown split"):
        load_beavertails_v("mini", split="dev")
    with pytest.raises(BeaverTailsUnavailableError, match="not in the BeaverTails-V hub layout"):
        load_beavertails_v(tmp_path)
    with pytest.raises(BeaverTailsUnavailableError, match="neither 'mini'"):
        load_beavertails_v("./no/such/folder")


def test_load_preference_data_follows_the_config():
    ds = load_preference_data(SMALL, "evaluation")
    assert len(ds) == 6 and "context" in ds.column_names
