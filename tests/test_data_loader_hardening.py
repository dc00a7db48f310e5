"""Loader hardening: every picture becomes RGB by a documented rule per mode; unreadable data files raise
the project's error naming the file; on_error="drop" counts every dropped record by field."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from saferlhfv.data import load_beavertails_v, validate_dataset
from saferlhfv.data.beavertails import BeaverTailsUnavailableError, UnreadableDataFileError
from saferlhfv.data.rgb import to_rgb
from tests.test_data_schema import BAD, as_dataset, good_record


def _pixel(image: Image.Image, xy=(0, 0)):
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return out.getpixel(xy)


def test_rgb_is_unchanged():
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    "mode, fill, expected",
    [
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent: white, not its stored red
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half-transparent black on white
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (40, 255), (40, 40, 40)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),  # 16-bit mid-grey -> 8-bit 128, not clipped to white
        ("I", 65535, (255, 255, 255)),
        ("I", 257 * 30, (30, 30, 30)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_every_mode_becomes_rgb(mode, fill, expected):
    assert _pixel(Image.new(mode, (3, 3), fill)) == expected


def test_palette_with_and_without_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    assert _pixel(image, (0, 0)) == (255, 0, 0) and _pixel(image, (1, 0)) == (0, 0, 255)
    image.info["transparency"] = 0  # palette entry 0 is transparent: white
    assert _pixel(image, (0, 0)) == (255, 255, 255) and _pixel(image, (1, 0)) == (0, 0, 255)


def test_a_16_bit_png_from_disk(tmp_path):
    Image.fromarray(np.full((2, 2), 65535 // 2, dtype=np.uint16)).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode.startswith("I") and _pixel(image) == (127, 127, 127)


# ------------------------------------------------------------------------------------ unreadable files


def _good_parquet(path):
    pq.write_table(as_dataset([good_record(), good_record(question="and this?")]).data.table, path)


@pytest.mark.parametrize("damage", ["not parquet", "truncated", "empty"])
def test_unreadable_parquet_names_the_file(tmp_path, damage):
    path = tmp_path / "train-00000-of-00001.parquet"
    _good_parquet(path)
    data = path.read_bytes()
    path.write_bytes({"not parquet": b"this is not parquet", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(UnreadableDataFileError, match="cannot read .* as parquet") as err:
        load_beavertails_v([path])
    assert str(path) in str(err.value) and "again" in str(err.value)
    assert isinstance(err.value, BeaverTailsUnavailableError)


@pytest.mark.parametrize(
    "name, text, kind",
    [
        ("data.json", '[{"question": "a", ', "JSON"),
        ("data.jsonl", json.dumps(good_record(image=None)) + "\n{broken\n", "JSON Lines"),
        ("data.json", '"a string, not records"', "JSON records"),
        ("data.jsonl", "[1, 2]\n", "JSON records"),
    ],
)
def test_unreadable_json_names_the_file(tmp_path, name, text, kind):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UnreadableDataFileError, match=f"as {kind} ") as err:
        load_beavertails_v([path])
    assert str(path) in str(err.value)


def test_json_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"question": "\xff\xfe"}\n')
    with pytest.raises(UnreadableDataFileError, match="UnicodeDecodeError") as err:
        load_beavertails_v([path])
    assert str(path) in str(err.value)


def test_a_good_parquet_still_loads(tmp_path):
    path = tmp_path / "train.parquet"
    _good_parquet(path)
    assert len(load_beavertails_v([path])) == 2


# ------------------------------------------------------------------------------------ on_error="drop"


def test_drop_counts_every_dropped_record_by_field():
    two_bad_fields = good_record(more_helpful_response_id="3", response_1_helpful_rate=4)
    records = [good_record()] + [good_record(**c) for _, c, _, _ in BAD] + [two_bad_fields]
    with pytest.warns(UserWarning, match="dropped"):
        kept, report = validate_dataset(as_dataset(records), on_error="drop")
    by_field = report.dropped_by_field()
    assert len(kept) == 1 and len(report.dropped) == len(BAD) + 1
    for index in report.dropped:  # every dropped record is counted under each field it failed
        fields = {p.field for p in report.problems if p.index == index}
        assert fields and all(by_field[f] >= 1 for f in fields)
    assert sum(by_field.values()) == len({(p.index, p.field) for p in report.problems})
    assert by_field["more_helpful_response_id"] >= 2 and by_field["image"] == 3
    assert report.to_dict()["dropped_by_field"] == by_field
    assert f"dropped {len(BAD) + 1} records, by field" in report.summary()
