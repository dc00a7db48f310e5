"""The single-response BeaverTails-V (``PKU-Alignment/BeaverTails-V``) as guard rows.

The hub's older layout has one answer per record and a safety label, one config per harm
category, splits ``train`` / ``evaluation``::

    question (str), image (Image), category (config name), response (str),
    is_response_safe ("True" / "False" or bool), image_severity (int >= 0, optional),
    severity (int 0..3, optional; also read as ``response_severity`` / ``severity_level``)

:func:`load_single_response_guard_rows` reads it from the hub, a local folder in the hub layout
or parquet / json / jsonl files (through :func:`~saferlhfv.data.beavertails.load_beavertails_v`),
validates every record like the paired loader does (``on_error="raise"`` stops at the first bad
record and names its fields, ``"drop"`` removes bad records with a report) and returns the guard's
columns: one **output-moderation** row per record (the data labels answers, not requests).

Severity: the record's own field when it has one; otherwise 0 for a safe answer and, for an
unsafe one, the picture's ``image_severity`` clipped to 1..3 (2, moderate, without it): a proxy,
flagged in ``context`` as ``"severity_from": "image_severity"`` / ``"default"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import datasets
from datasets import Dataset

from saferlhfv.data.content import CATEGORIES
from saferlhfv.data.schema import (
    SINGLE_RESPONSE_FIELDS,
    Problem,
    SchemaError,
    ValidationReport,
    _bool_label,
    _image_problem,
    _is_int,
)
from saferlhfv.data.world.datasets import GUARD_FEATURES

__all__ = [
    "GUARD_ROW_FEATURES",
    "SEVERITY_FIELDS",
    "check_single_record",
    "load_single_response_guard_rows",
    "single_response_to_guard_rows",
]

#: the columns of a guard row (as :func:`saferlhfv.data.world.guard_dataset` has them).
GUARD_ROW_FEATURES = GUARD_FEATURES
#: names a record's severity (0 none .. 3 severe) may have, first found wins.
SEVERITY_FIELDS: tuple[str, ...] = ("severity", "response_severity", "severity_level")
#: severity of an unsafe answer when neither a severity field nor image_severity says (moderate).
DEFAULT_UNSAFE_SEVERITY = 2


def check_single_record(
    record: dict[str, Any], *, check_image: bool = True, base_dir: str | None = None
) -> list[tuple[str, str]]:
    """All defects of one single-response record, as ``(field, reason)`` pairs (empty: valid)."""
    out: list[tuple[str, str]] = []
    for f in ("question", "response"):
        v = record.get(f)
        if not isinstance(v, str) or not v.strip():
            out.append((f, "must be a non-empty string" if v is not None else "missing field"))
    cat = record.get("category")
    if cat not in CATEGORIES:
        out.append(("category", f"must be one of the 20 config names, got {cat!r}"))
    label = record.get("is_response_safe")
    if _bool_label(label) is None:
        out.append(("is_response_safe", f"must be 'True' / 'False' (or a bool), got {label!r}"))
    sev = record.get("image_severity")
    if sev is not None and (not _is_int(sev) or sev < 0):
        out.append(("image_severity", f"must be an int >= 0, got {sev!r}"))
    for f in SEVERITY_FIELDS:
        v = record.get(f)
        if v is not None and (not _is_int(v) or not 0 <= v <= 3):
            out.append((f, f"must be an int 0..3, got {v!r}"))
    if check_image:
        reason = _image_problem(record.get("image"), base_dir)
        if reason:
            out.append(("image", reason))
    safe, sev_label = _bool_label(record.get("is_response_safe")), _record_severity(record)
    if safe is not None and sev_label is not None and safe == (sev_label > 0):
        out.append(("severity", f"contradicts is_response_safe={safe} (severity {sev_label})"))
    return out


def _record_severity(record: dict[str, Any]) -> int | None:
    for f in SEVERITY_FIELDS:
        if _is_int(record.get(f)):
            return int(record[f])
    return None


def _guard_row(record: dict[str, Any]) -> dict[str, Any]:
    unsafe = not _bool_label(record["is_response_safe"])
    sev, source = _record_severity(record), "field"
    if sev is None:
        img_sev = record.get("image_severity")
        if not unsafe:
            sev, source = 0, "safe"
        elif _is_int(img_sev):
            sev, source = min(3, max(1, int(img_sev))), "image_severity"
        else:
            sev, source = DEFAULT_UNSAFE_SEVERITY, "default"
    ctx = {"category": record["category"], "source": "single_response", "severity_from": source}
    if _is_int(record.get("image_severity")):
        ctx["image_severity"] = int(record["image_severity"])
    return {
        "image": record["image"],
        "question": record["question"],
        "response": record["response"],
        "mode": "output",
        "is_unsafe": bool(unsafe),
        "category": record["category"],
        "severity": int(sev),
        "context": json.dumps(ctx, sort_keys=True, separators=(",", ":")),
    }


def single_response_to_guard_rows(
    ds: Dataset, on_error: str = "raise", *, check_images: bool = True, base_dir: str | None = None
) -> tuple[Dataset, ValidationReport]:
    """Validate single-response records and turn them into guard rows.

    Args:
        ds: a dataset with at least :data:`~saferlhfv.data.schema.SINGLE_RESPONSE_FIELDS`.
        on_error: ``"raise"`` (:class:`~saferlhfv.data.schema.SchemaError` at the first bad record) or
            ``"drop"`` (bad records removed and reported).

    Returns:
        ``(rows, report)``: ``rows`` has :data:`GUARD_ROW_FEATURES` (one output row per valid record,
        ``is_unsafe = not is_response_safe``); ``report`` lists every problem and dropped index.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
    missing = [f for f in SINGLE_RESPONSE_FIELDS if f not in ds.column_names]
    if missing:
        raise SchemaError(
            f"the dataset lacks column(s) {missing} of the single-response BeaverTails-V layout "
            f"(has: {sorted(ds.column_names)})",
            [Problem(-1, f, "missing field (no such column)") for f in missing],
        )
    raw = ds
    if isinstance(ds.features.get("image"), datasets.Image) and ds.features["image"].decode:
        raw = ds.cast_column("image", datasets.Image(decode=False))
    report = ValidationReport(n_records=len(ds))
    rows = []
    for i, rec in enumerate(raw):
        found = check_single_record(rec, check_image=check_images, base_dir=base_dir)
        if found:
            probs = [Problem(i, f, r) for f, r in found]
            if on_error == "raise":
                msg = "; ".join(f"'{p.field}': {p.reason}" for p in probs)
                raise SchemaError(f"record {i} is invalid: {msg} (use on_error='drop' to drop bad records)", probs)
            report.problems.extend(probs)
            continue
        rows.append(_guard_row(rec))
    report.dropped = report.bad_indices
    cols = {k: [r[k] for r in rows] for k in GUARD_ROW_FEATURES}
    return Dataset.from_dict(cols, features=GUARD_ROW_FEATURES), report


def load_single_response_guard_rows(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    configs: Sequence[str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    *,
    check_images: bool = True,
    return_report: bool = False,
) -> Dataset | tuple[Dataset, ValidationReport]:
    """Guard rows from a single-response BeaverTails-V source.

    Args:
        source: the hub id ``"PKU-Alignment/BeaverTails-V"``, a local folder in its layout (one folder per
            category config with ``train-*.parquet`` / ``evaluation-*.parquet`` or json / jsonl), or files.
        configs: category configs to read (None = all 20).
        split: ``"train"`` or ``"evaluation"``.
        on_error: ``"raise"`` or ``"drop"`` (see :func:`single_response_to_guard_rows`).

    Returns:
        The guard rows (and the validation report with ``return_report=True``).

    Raises:
        SchemaError: the source is in the paired layout, lacks columns, or has a bad record (``"raise"``).
        BeaverTailsUnavailableError: the hub or the files cannot be reached.
    """
    import warnings

    from saferlhfv.data.beavertails import load_beavertails_v

    with warnings.catch_warnings():  # the "no preference pairs" warning: expected here
        warnings.simplefilter("ignore", UserWarning)
        ds = load_beavertails_v(source, configs, split, allow_single_response=True)
    if "response_1" in ds.column_names:
        raise SchemaError(
            f"{source!r} is in the paired BeaverTails-V layout (response_1 / response_2); the guard's single-response "
            "loader reads 'response' and 'is_response_safe' (PKU-Alignment/BeaverTails-V)"
        )
    is_path = not isinstance(source, (list, tuple)) and os.path.exists(os.fspath(source))
    base = os.fspath(source) if is_path and os.path.isdir(os.fspath(source)) else None
    rows, report = single_response_to_guard_rows(ds, on_error, check_images=check_images, base_dir=base)
    if report.problems:
        warnings.warn(f"dropped invalid single-response records: {report.summary()}", UserWarning, stacklevel=2)
    return (rows, report) if return_report else rows
