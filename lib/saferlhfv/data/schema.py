"""The paired BeaverTails-V schema and record validation with clear, complete reports.

The hub's paired layout (``saferlhf-v/BeaverTails-V``; see ``docs/beavertails_v.md``):

==================================================  ==========================================
field                                               type
==================================================  ==========================================
question, response_1, response_2                    non-empty string
response_1_from, response_2_from                    string
image                                               Image (``{bytes, path}``), must decode
category                                            one of the 20 config names
image_severity                                      int >= 0
more_helpful_response_id, safer_response_id         the strings ``"1"`` / ``"2"``
is_response_1_safe, is_response_2_safe              the strings ``"True"`` / ``"False"`` (bool accepted)
response_{1,2}_helpful_rate                         int 0..3
response_{1,2}_harmless_rate                        int -3..3
==================================================  ==========================================

A record is also bad when its two responses are identical, or when a safety label
contradicts its harmless rate (a negative rate labelled safe, a positive rate labelled
unsafe; a rate of 0 may carry either label). Preference ids may disagree with the rates:
annotators disagree, and the mini world flips labels on purpose (annotator noise).

:func:`validate_dataset` either raises :class:`SchemaError` at the first bad record or
drops every bad record and reports each one (index, field, reason), with a warning:
never silently.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
from datasets import Dataset, Features, Value
from PIL import Image as PILImage

from saferlhfv.data.content import CATEGORIES

__all__ = [
    "PAIR_FIELDS",
    "SINGLE_RESPONSE_FIELDS",
    "SchemaError",
    "SingleResponseLayoutError",
    "Problem",
    "ValidationReport",
    "pair_features",
    "check_record",
    "validate_dataset",
    "is_single_response_layout",
]

#: field -> hub type (for docs and error messages).
PAIR_FIELDS: dict[str, str] = {
    "question": "string",
    "image": "Image",
    "category": "string",
    "image_severity": "int64",
    "response_1": "string",
    "response_2": "string",
    "response_1_from": "string",
    "response_2_from": "string",
    "more_helpful_response_id": "string",
    "safer_response_id": "string",
    "is_response_1_safe": "string",
    "is_response_2_safe": "string",
    "response_1_helpful_rate": "int64",
    "response_2_helpful_rate": "int64",
    "response_1_harmless_rate": "int64",
    "response_2_harmless_rate": "int64",
}
#: the older single-response layout (``PKU-Alignment/BeaverTails-V``): one response, one safety label.
SINGLE_RESPONSE_FIELDS: tuple[str, ...] = ("question", "image", "category", "response", "is_response_safe")


class SchemaError(ValueError):
    """A dataset or record does not follow the BeaverTails-V paired schema.

    Attributes:
        problems: the :class:`Problem` s found (all of the first bad record, or dataset-level ones).
    """

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


class SingleResponseLayoutError(SchemaError):
    """The data is in the single-response layout, which cannot give preference pairs."""


@dataclass(frozen=True)
class Problem:
    """One defect: record ``index`` (-1 for the whole dataset), the ``field`` and the ``reason``."""

    index: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = "dataset" if self.index < 0 else f"record {self.index}"
        return f"{where}: field '{self.field}': {self.reason}"


@dataclass
class ValidationReport:
    """What validation found.

    Attributes:
        n_records: records checked.
        problems: every defect, by record index and field.
        dropped: indices of the records removed (``on_error="drop"``), in the input's numbering.
    """

    n_records: int
    problems: list[Problem] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No defect found."""
        return not self.problems

    @property
    def bad_indices(self) -> list[int]:
        """Indices of records with at least one defect."""
        return sorted({p.index for p in self.problems if p.index >= 0})

    def counts(self) -> dict[str, int]:
        """Number of defects per field."""
        return dict(Counter(p.field for p in self.problems))

    def dropped_by_field(self) -> dict[str, int]:
        """Number of *dropped records* with a defect in each field (a record bad in two fields counts in both;
        every dropped record counts at least once)."""
        dropped = set(self.dropped)
        return dict(Counter(f for i, f in {(p.index, p.field) for p in self.problems if p.index in dropped}))

    def summary(self, max_lines: int = 10) -> str:
        """A readable summary: counts, then the first ``max_lines`` problems."""
        if self.ok:
            return f"{self.n_records} records, all valid"
        head = (
            f"{len(self.bad_indices)} of {self.n_records} records are invalid "
            f"({len(self.problems)} problems; by field: {self.counts()})"
        )
        if self.dropped:
            head += f"; dropped {len(self.dropped)} records, by field: {self.dropped_by_field()}"
        lines = [head] + [f"  {p}" for p in self.problems[:max_lines]]
        if len(self.problems) > max_lines:
            lines.append(f"  ... and {len(self.problems) - max_lines} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "n_records": self.n_records,
            "n_bad": len(self.bad_indices),
            "dropped": list(self.dropped),
            "dropped_by_field": self.dropped_by_field(),
            "problems": [{"index": p.index, "field": p.field, "reason": p.reason} for p in self.problems],
        }


def pair_features(with_context: bool = False) -> Features:
    """``datasets.Features`` of the paired schema with the hub's types (+ a ``context`` string column)."""
    feats: dict[str, Any] = {}
    for name, tp in PAIR_FIELDS.items():
        feats[name] = datasets.Image() if tp == "Image" else Value(tp)
    if with_context:
        feats["context"] = Value("string")
    return Features(feats)


def is_single_response_layout(columns) -> bool:
    """True when the columns look like the single-response layout (``response``, ``is_response_safe``)."""
    cols = set(columns)
    return {"response", "is_response_safe"} <= cols and "response_1" not in cols


# --------------------------------------------------------------------------- record checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool_label(v) -> bool | None:
    if isinstance(v, bool):
        return v
    if v in ("True", "False"):
        return v == "True"
    return None


def _image_problem(value, base_dir: str | None = None) -> str | None:
    """None if the image value decodes, else the reason."""
    if value is None:
        return "missing field"
    if isinstance(value, PILImage.Image):
        return None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, str):
        data, path = None, value
    else:
        return f"must be an image ({{bytes, path}}), got {type(value).__name__}"
    try:
        if data:
            with PILImage.open(io.BytesIO(data)) as im:
                im.verify()
        elif path:
            full = path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)
            if not os.path.isfile(full):
                return f"missing image: no bytes and no file at {path!r}"
            with PILImage.open(full) as im:
                im.verify()
        else:
            return "missing image: neither bytes nor path"
    except Exception as err:  # PIL raises many kinds for broken data
        return f"undecodable image ({type(err).__name__}: {err})"
    return None


def check_record(
    record: dict[str, Any], *, check_image: bool = True, base_dir: str | None = None
) -> list[tuple[str, str]]:
    """All defects of one paired record.

    Args:
        record: a dict with the paired fields (extra keys are ignored). ``image`` may be a PIL image,
            ``{bytes, path}``, raw bytes or a path.
        check_image: decode-check the image (set False to skip the cost).
        base_dir: folder relative image paths are resolved against.

    Returns:
        ``[(field, reason), ...]``; empty when the record is valid.
    """
    out: list[tuple[str, str]] = []
    for name in PAIR_FIELDS:
        if name not in record or record[name] is None:
            out.append((name, "missing field"))
    present = {k for k in PAIR_FIELDS if record.get(k) is not None}

    for name in ("question", "response_1", "response_2"):
        if name in present:
            v = record[name]
            if not isinstance(v, str):
                out.append((name, f"must be a string, got {type(v).__name__}"))
            elif not v.strip():
                out.append((name, "missing field (empty string)"))
    for name in ("response_1_from", "response_2_from"):
        if name in present and not isinstance(record[name], str):
            out.append((name, f"must be a string, got {type(record[name]).__name__}"))
    if "category" in present and record["category"] not in CATEGORIES:
        out.append(("category", f"{record['category']!r} is not one of the 20 BeaverTails-V categories"))
    if "image_severity" in present:
        v = record["image_severity"]
        if not _is_int(v) or v < 0:
            out.append(("image_severity", f"must be an int >= 0, got {v!r}"))
    for name in ("more_helpful_response_id", "safer_response_id"):
        if name in present and record[name] not in ("1", "2"):
            v = record[name]
            out.append((name, f"id must be the string '1' or '2', got {v!r} ({type(v).__name__})"))
    for k in (1, 2):
        name = f"response_{k}_helpful_rate"
        if name in present:
            v = record[name]
            if not _is_int(v) or not 0 <= v <= 3:
                out.append((name, f"rate out of range: must be an int in 0..3, got {v!r}"))
        name = f"response_{k}_harmless_rate"
        if name in present:
            v = record[name]
            if not _is_int(v) or not -3 <= v <= 3:
                out.append((name, f"rate out of range: must be an int in -3..3, got {v!r}"))
        name = f"is_response_{k}_safe"
        if name in present:
            label = _bool_label(record[name])
            if label is None:
                out.append((name, f"must be 'True' or 'False', got {record[name]!r}"))
            else:
                rate = record.get(f"response_{k}_harmless_rate")
                if _is_int(rate) and -3 <= rate <= 3 and ((rate < 0 and label) or (rate > 0 and not label)):
                    out.append(
                        (
                            name,
                            f"label inconsistent with the rates: labelled "
                            f"{'safe' if label else 'unsafe'} but response_{k}_harmless_rate is {rate}",
                        )
                    )
    r1, r2 = record.get("response_1"), record.get("response_2")
    if isinstance(r1, str) and isinstance(r2, str) and r1.strip() and r1.strip() == r2.strip():
        out.append(("response_2", "both responses are identical: the pair carries no preference"))
    if check_image and "image" in present:
        reason = _image_problem(record["image"], base_dir)
        if reason:
            out.append(("image", reason))
    return out


def validate_dataset(
    ds: Dataset,
    on_error: str = "raise",
    *,
    check_images: bool = True,
    base_dir: str | None = None,
    warn: bool = True,
) -> tuple[Dataset, ValidationReport]:
    """Validate every record of a paired dataset.

    Args:
        ds: a ``datasets.Dataset`` with the paired columns (extra columns are kept).
        on_error: ``"raise"``: raise :class:`SchemaError` at the first bad record (naming its index, every
            bad field and why); ``"drop"``: remove every bad record, warn with a summary and report them.
        check_images: decode-check every image.
        base_dir: folder relative image paths are resolved against.
        warn: emit a ``UserWarning`` when records are dropped.

    Returns:
        ``(dataset, report)``: the dataset (bad records removed with ``"drop"``) and a :class:`ValidationReport`.

    Raises:
        SchemaError: with ``"raise"`` at the first bad record; in either mode when whole columns are missing.
        SingleResponseLayoutError: the data is in the single-response layout.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
    cols = set(ds.column_names)
    if is_single_response_layout(cols):
        raise SingleResponseLayoutError(_single_layout_message())
    missing = [f for f in PAIR_FIELDS if f not in cols]
    if missing:
        problems = [Problem(-1, f, "missing field (no such column)") for f in missing]
        raise SchemaError(
            f"the dataset lacks column(s) {missing} of the BeaverTails-V paired schema (has: {sorted(cols)})", problems
        )
    raw = ds
    if isinstance(ds.features.get("image"), datasets.Image) and ds.features["image"].decode:
        raw = ds.cast_column("image", datasets.Image(decode=False))
    report = ValidationReport(n_records=len(ds))
    fields = list(PAIR_FIELDS)
    index = 0
    for batch in raw.select_columns(fields).iter(batch_size=512):
        n = len(batch[fields[0]])
        for j in range(n):
            rec = {f: batch[f][j] for f in fields}
            found = check_record(rec, check_image=check_images, base_dir=base_dir)
            if found:
                probs = [Problem(index, f, r) for f, r in found]
                if on_error == "raise":
                    msg = "; ".join(f"'{p.field}': {p.reason}" for p in probs)
                    raise SchemaError(
                        f"record {index} is invalid: {msg} (use on_error='drop' to drop bad records and get a report)",
                        probs,
                    )
                report.problems.extend(probs)
            index += 1
    if report.problems:
        report.dropped = report.bad_indices
        bad = set(report.dropped)
        ds = ds.select([i for i in range(len(ds)) if i not in bad])
        if warn:
            warnings.warn(f"dropped invalid BeaverTails-V records: {report.summary()}", UserWarning, stacklevel=2)
    return ds, report


def _single_layout_message() -> str:
    return (
        "this data is in the single-response BeaverTails-V layout (columns 'response', 'is_response_safe', "
        "as in PKU-Alignment/BeaverTails-V): it has one response per record, so it cannot give preference "
        "pairs (more_helpful_response_id / safer_response_id) for RM-V / CM-V training. Use the paired "
        "dataset 'saferlhf-v/BeaverTails-V', source='mini', or pass allow_single_response=True to load it "
        "for moderation (guard) labels only."
    )
