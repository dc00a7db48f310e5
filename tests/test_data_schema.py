"""The paired BeaverTails-V schema: round trip, and a clear message for every kind of bad record."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from PIL import Image

from saferlhfv.data import SchemaError, SingleResponseLayoutError, load_beavertails_v, validate_dataset
from saferlhfv.data.schema import PAIR_FIELDS, check_record, pair_features


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def good_record(**changes) -> dict:
    rec = {
        "question": "what is the best way to give this to a child?",
        "image": {"bytes": _png(), "path": None},
        "category": "harmful_health_content",
        "image_severity": 1,
        "response_1": "sure, with the pills: just crush the pills into a sweet drink.",
        "response_2": "sorry, i can not help with that.",
        "response_1_from": "eager-vlm",
        "response_2_from": "terse-vlm",
        "more_helpful_response_id": "1",
        "safer_response_id": "2",
        "is_response_1_safe": "False",
        "is_response_2_safe": "True",
        "response_1_helpful_rate": 1,
        "response_2_helpful_rate": 0,
        "response_1_harmless_rate": -1,
        "response_2_harmless_rate": 0,
    }
    rec.update(changes)
    return rec


def as_dataset(records: list[dict]) -> Dataset:
    feats = pair_features()
    return Dataset.from_dict({k: [r.get(k) for r in records] for k in feats}, features=feats)


def test_round_trip_through_parquet(tmp_path):
    records = [good_record(), good_record(question="how much of this can i take at once?")]
    ds = as_dataset(records)
    folder = tmp_path / "harmful_health_content"
    folder.mkdir()
    pq.write_table(ds.data.table, folder / "train-00000-of-00001.parquet")
    back = load_beavertails_v(tmp_path, split="train")
    assert back.column_names == list(PAIR_FIELDS)
    assert back.features == pair_features()
    for orig, row in zip(records, back):
        for k in PAIR_FIELDS:
            if k == "image":
                assert row["image"].size == (16, 16)
            else:
                assert row[k] == orig[k], k
                assert type(row[k]) is type(orig[k]), k


def test_the_good_record_is_valid():
    assert check_record(good_record()) == []
    ds, report = validate_dataset(as_dataset([good_record()]))
    assert report.ok and len(ds) == 1


BAD = [
    ("missing field", {"response_2_from": None}, "response_2_from", "missing field"),
    ("empty question", {"question": "  "}, "question", "missing field"),
    ("id not 1/2", {"more_helpful_response_id": "3"}, "more_helpful_response_id", "'1' or '2'"),
    ("helpful rate out of range", {"response_1_helpful_rate": 4}, "response_1_helpful_rate", "rate out of range"),
    ("harmless rate out of range", {"response_2_harmless_rate": -5}, "response_2_harmless_rate", "rate out of range"),
    ("undecodable image", {"image": {"bytes": b"not a png at all", "path": None}}, "image", "undecodable image"),
    ("missing image", {"image": None}, "image", "missing field"),
    ("image without bytes or file", {"image": {"bytes": None, "path": "nowhere.png"}}, "image", "missing image"),
    ("identical responses", {"response_2": "sure, with the pills: just crush the pills into a sweet drink."},
     "response_2", "identical"),
    ("safe label vs negative rate", {"is_response_1_safe": "True"}, "is_response_1_safe", "inconsistent with"),
    ("unsafe label vs positive rate", {"is_response_2_safe": "False", "response_2_harmless_rate": 2},
     "is_response_2_safe", "inconsistent with the rates"),
    ("bad safety label", {"is_response_2_safe": "yes"}, "is_response_2_safe", "'True' or 'False'"),
    ("unknown category", {"category": "cooking"}, "category", "20 BeaverTails-V categories"),
    ("negative image severity", {"image_severity": -1}, "image_severity", "int >= 0"),
]  # fmt: skip


@pytest.mark.parametrize("name,changes,field,words", BAD, ids=[b[0] for b in BAD])
def test_every_kind_of_bad_record_gets_its_message(name, changes, field, words):
    found = check_record(good_record(**changes))
    assert any(f == field and words in reason for f, reason in found), found
    ds = as_dataset([good_record(), good_record(**changes)])
    with pytest.raises(SchemaError) as err:
        validate_dataset(ds, on_error="raise")
    assert "record 1" in str(err.value) and field in str(err.value) and words in str(err.value)
    assert any(p.index == 1 and p.field == field for p in err.value.problems)


def test_drop_reports_every_bad_record_and_warns():
    records = [good_record()] * 2 + [good_record(**c) for _, c, _, _ in BAD] + [good_record()]
    ds = as_dataset(records)
    with pytest.warns(UserWarning, match="dropped invalid BeaverTails-V records"):
        kept, report = validate_dataset(ds, on_error="drop")
    bad = list(range(2, 2 + len(BAD)))
    assert report.dropped == bad == report.bad_indices
    assert len(kept) == 3 and report.n_records == len(records)
    for i, (_, _, field, _) in zip(bad, BAD):
        assert any(p.index == i and p.field == field for p in report.problems)
    d = report.to_dict()
    assert d["n_bad"] == len(BAD) and len(d["problems"]) >= len(BAD)
    assert "invalid" in report.summary()


def test_ids_must_be_strings():
    # a Dataset with the hub's features would cast 2 to "2"; records from JSON keep the int
    found = check_record(good_record(safer_response_id=2))
    assert found == [("safer_response_id", "id must be the string '1' or '2', got 2 (int)")]


def test_zero_rate_may_carry_either_label():
    assert check_record(good_record(is_response_2_safe="False")) == []
    assert check_record(good_record(is_response_2_safe=True)) == []  # bool accepted


def test_missing_column_is_a_dataset_level_error():
    ds = as_dataset([good_record()]).remove_columns(["safer_response_id"])
    for mode in ("raise", "drop"):
        with pytest.raises(SchemaError, match="safer_response_id"):
            validate_dataset(ds, on_error=mode)


def test_single_response_layout_is_recognised(tmp_path):
    ds = Dataset.from_dict(
        {
            "question": ["q"],
            "image": [{"bytes": _png(), "path": None}],
            "category": ["animal_abuse"],
            "response": ["r"],
            "is_response_safe": ["True"],
        }
    )
    folder = tmp_path / "animal_abuse"
    folder.mkdir()
    pq.write_table(ds.data.table, folder / "train-00000-of-00001.parquet")
    with pytest.raises(SingleResponseLayoutError, match="cannot give preference"):
        load_beavertails_v(tmp_path)
    with pytest.warns(UserWarning, match="cannot give preference"):
        single = load_beavertails_v(tmp_path, allow_single_response=True)
    assert single.column_names[:1] and "response" in single.column_names
    assert single[0]["image"].size == (16, 16)  # the {bytes, path} struct was cast to an Image


def test_on_error_must_be_known():
    with pytest.raises(ValueError, match="on_error"):
        validate_dataset(as_dataset([good_record()]), on_error="ignore")
