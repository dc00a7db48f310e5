"""Load BeaverTails-V (the hub, a local copy, or the shipped mini world) as a validated ``datasets.Dataset``.

Sources :func:`load_beavertails_v` understands:

* ``"mini"``: BeaverTails-V-mini. Without ``cfg`` it reads the copy committed under
  ``data/beavertails_v_mini`` (the tiny preset's world; generated in memory if that folder is
  missing); with ``cfg`` (a :class:`~saferlhfv.config.DataConfig`) it generates the world of
  that config (cached in-process).
* a hub id, e.g. ``"saferlhf-v/BeaverTails-V"``: ``datasets.load_dataset`` per category config.
  Offline, the error says so and names ``"mini"`` as the alternative.
* a local folder in the hub's layout: one folder per category config holding
  ``train-*.parquet`` / ``evaluation-*.parquet`` (or ``.json`` / ``.jsonl``, or a ``train/``
  sub-folder), optionally under ``data/``; a folder of split files without category folders
  is read as one config.
* one file or a list of parquet / json / jsonl files (``configs`` then filters the
  ``category`` column).

Parquet files store the image as a ``{bytes, path}`` struct; it is cast to an ``Image``
feature. The result is validated (:func:`saferlhfv.data.schema.validate_dataset`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from saferlhfv.config import DataConfig
from saferlhfv.data.content import CATEGORIES
from saferlhfv.data.schema import (
    PAIR_FIELDS,
    SchemaError,
    SingleResponseLayoutError,
    ValidationReport,
    _single_layout_message,
    is_single_response_layout,
    validate_dataset,
)
from saferlhfv.data.world.grammar import split_name
from saferlhfv.paths import data_dir

__all__ = [
    "HUB_ID",
    "SINGLE_RESPONSE_HUB_ID",
    "MINI_DIRNAME",
    "BeaverTailsUnavailableError",
    "UnreadableDataFileError",
    "load_beavertails_v",
    "load_preference_data",
    "mini_dir",
]

HUB_ID = "saferlhf-v/BeaverTails-V"
SINGLE_RESPONSE_HUB_ID = "PKU-Alignment/BeaverTails-V"
MINI_DIRNAME = "beavertails_v_mini"
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


class BeaverTailsUnavailableError(RuntimeError):
    """The requested BeaverTails-V source cannot be reached (offline hub, missing files)."""


class UnreadableDataFileError(BeaverTailsUnavailableError):
    """A parquet / json / jsonl file exists but cannot be read (damaged, truncated, not that format)."""


def _unreadable(path: Path, kind: str, err: BaseException) -> UnreadableDataFileError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return UnreadableDataFileError(
        f"cannot read {path} as {kind} ({type(err).__name__}: {first}): the file is damaged, truncated or not "
        f"{kind}. Download or copy it again (a partial download is the usual cause), or remove it from the "
        "data source; data.source='mini' needs no files."
    )


def mini_dir() -> Path:
    """Folder of the committed BeaverTails-V-mini copy (``<data>/beavertails_v_mini``)."""
    return data_dir() / MINI_DIRNAME


def _check_configs(configs: Sequence[str] | None) -> list[str] | None:
    if configs is None:
        return None
    if isinstance(configs, str):
        configs = [configs]
    bad = [c for c in configs if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown BeaverTails-V config(s) {bad}; the 20 configs are: {', '.join(CATEGORIES)}")
    return list(configs)


# --------------------------------------------------------------------------- reading files


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:  # ArrowInvalid: not parquet / truncated; OSError: unreadable
        raise _unreadable(path, "parquet", err) from err


def _read_json(path: Path) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise _unreadable(path, "JSON Lines" if path.suffix == ".jsonl" else "JSON", err) from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _unreadable(path, "JSON records", TypeError("expected a list of objects, one per record"))
    base = str(path.parent)
    for r in rows:
        img = r.get("image")
        if isinstance(img, str):  # a path relative to the file
            r["image"] = {"bytes": None, "path": img if os.path.isabs(img) else os.path.join(base, img)}
        elif isinstance(img, dict) and isinstance(img.get("path"), str) and not img.get("bytes"):
            p = img["path"]
            r["image"] = {"bytes": None, "path": p if os.path.isabs(p) else os.path.join(base, p)}
    if not rows:
        return Dataset.from_dict({})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols = {k: [r.get(k) for r in rows] for k in keys}
    if "image" in cols:
        imgs = cols.pop("image")
        ds = Dataset.from_dict(cols)
        img_ds = Dataset.from_dict({"image": imgs}, features=datasets.Features({"image": datasets.Image()}))
        return datasets.concatenate_datasets([img_ds, ds], axis=1)
    return Dataset.from_dict(cols)


def _as_image_feature(ds: Dataset) -> Dataset:
    feat = ds.features.get("image")
    if feat is None or isinstance(feat, datasets.Image):
        return ds
    return ds.cast_column("image", datasets.Image())


def _read_files(files: list[Path]) -> Dataset:
    parts: list[Dataset] = []
    tables = [f for f in files if f.suffix == ".parquet"]
    if tables:
        t = [_read_parquet(f) for f in tables]
        try:
            table = pa.concat_tables(t, promote_options="permissive")
        except (pa.ArrowInvalid, TypeError) as err:
            raise SchemaError(f"parquet files {', '.join(map(str, tables))} have incompatible schemas: {err}") from None
        parts.append(_as_image_feature(Dataset(datasets.table.InMemoryTable(table))))
    for f in files:
        if f.suffix in (".json", ".jsonl"):
            parts.append(_as_image_feature(_read_json(f)))
    if not parts:
        raise BeaverTailsUnavailableError(f"no parquet / json files among {files}")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _split_files(folder: Path, split: str) -> list[Path]:
    """Files of ``split`` in a config folder: ``<split>-*.ext``, ``<split>.ext`` or ``<split>/*.ext``."""
    names = {split} | ({"eval", "test", "validation"} if split == "evaluation" else set())
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in _DATA_SUFFIXES:
            stem = f.name.split(".")[0]
            if stem in names or stem.split("-")[0] in names:
                out.append(f)
        elif f.is_dir() and f.name in names:
            out += sorted(g for g in f.iterdir() if g.is_file() and g.suffix in _DATA_SUFFIXES)
    return out


def _load_local_dir(root: Path, configs: list[str] | None, split: str) -> Dataset:
    base = root / "data" if (root / "data").is_dir() and not any((root / c).is_dir() for c in CATEGORIES) else root
    found = [c for c in CATEGORIES if (base / c).is_dir()]
    if not found:
        files = _split_files(base, split)
        if not files:
            raise BeaverTailsUnavailableError(
                f"{root} is not in the BeaverTails-V hub layout: expected one folder per category config "
                f"(e.g. {root}/animal_abuse/{split}-00000-of-00001.parquet) or {split} files in the folder"
            )
        ds = _read_files(files)
        if configs is not None and "category" in ds.column_names:
            ds = ds.filter(lambda c: c in configs, input_columns="category")
        return ds
    wanted = configs if configs is not None else found
    absent = [c for c in wanted if c not in found]
    if absent:
        raise BeaverTailsUnavailableError(f"{base} has no folder for config(s) {absent} (found: {', '.join(found)})")
    parts = []
    for c in wanted:
        files = _split_files(base / c, split)
        if not files:
            raise BeaverTailsUnavailableError(
                f"{base / c} has no '{split}' files (expected {split}-*.parquet, {split}.jsonl or {split}/)"
            )
        parts.append(_read_files(files))
    try:
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except ValueError as err:
        raise SchemaError(f"the category folders under {base} have different columns: {err}") from None


def _load_hub(source: str, configs: list[str] | None, split: str) -> Dataset:
    names = configs or list(CATEGORIES)
    parts = []
    for name in names:
        try:
            parts.append(datasets.load_dataset(source, name=name, split=split, trust_remote_code=False))
        except Exception as err:  # offline, unknown repo, gated ... : say what to do instead
            offline = any(
                os.environ.get(v, "0") not in ("0", "", "false", "False")
                for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            )
            why = (
                "the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else "it cannot be reached"
            )
            raise BeaverTailsUnavailableError(
                f"could not load {source!r} (config {name!r}, split {split!r}) from the Hugging Face hub: {why} "
                f"[{type(err).__name__}: {str(err)[:300]}]. Use source='mini' for the bundled BeaverTails-V-mini "
                f"(the same schema, generated offline), or download the dataset on a connected machine "
                f"(e.g. `huggingface-cli download {source} --repo-type dataset --local-dir DIR`) and pass DIR."
            ) from err
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _load_mini(configs: list[str] | None, split: str, cfg: DataConfig | None) -> Dataset:
    from saferlhfv.data.world import preference_pairs

    if cfg is not None:
        if configs is not None and configs != cfg.configs:
            cfg = dataclasses.replace(cfg, configs=list(configs))
        return preference_pairs(cfg, split)
    folder = mini_dir()
    if folder.is_dir() and any(folder.iterdir()):
        return _load_local_dir(folder, configs, split)
    return preference_pairs(DataConfig(configs=configs), split)


# --------------------------------------------------------------------------- public API


def load_beavertails_v(
    source: str | os.PathLike | Sequence[str | os.PathLike] = HUB_ID,
    configs: Sequence[str] | None = None,
    split: str = "train",
    on_error: str = "raise",
    *,
    cfg: DataConfig | None = None,
    allow_single_response: bool = False,
    check_images: bool = True,
    return_report: bool = False,
) -> Dataset | tuple[Dataset, ValidationReport]:
    """Load paired BeaverTails-V data as a validated ``datasets.Dataset``.

    Args:
        source: ``"mini"``, a hub id (``"saferlhf-v/BeaverTails-V"``), a local folder in the hub layout, or a
            parquet / json / jsonl file or list of files.
        configs: harm-category configs to load (None = all 20).
        split: ``"train"`` or ``"evaluation"`` (``"eval"`` / ``"test"`` accepted).
        on_error: ``"raise"`` (first bad record raises :class:`~saferlhfv.data.schema.SchemaError`) or
            ``"drop"`` (bad records removed, a warning and a report say which and why).
        cfg: with ``source="mini"``, generate the world of this config instead of reading the committed copy.
        allow_single_response: accept the single-response layout (``response``, ``is_response_safe``) for
            moderation use; it is returned unvalidated, with a warning that it gives no preference pairs.
        check_images: decode-check every image during validation.
        return_report: also return the :class:`~saferlhfv.data.schema.ValidationReport`.

    Returns:
        The dataset (``image`` an ``Image`` feature, the 16 paired fields with hub types; the mini world adds
        ``context``), or ``(dataset, report)`` with ``return_report=True``.

    Raises:
        BeaverTailsUnavailableError: the hub cannot be reached (the message names ``"mini"``) or files are missing.
        SingleResponseLayoutError: single-response data without ``allow_single_response``.
        SchemaError: a bad record with ``on_error="raise"``, or missing columns.
    """
    split = split_name(split)
    configs = _check_configs(configs)
    if isinstance(source, (list, tuple)):
        files = [Path(s) for s in source]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise BeaverTailsUnavailableError(f"no such file(s): {missing}")
        ds = _read_files(files)
        if configs is not None and "category" in ds.column_names:
            ds = ds.filter(lambda c: c in configs, input_columns="category")
        base = str(files[0].parent) if files else None
    else:
        source = os.fspath(source)
        base = None
        if source == "mini":
            ds = _load_mini(configs, split, cfg)
        elif Path(source).exists():
            path = Path(source)
            if path.is_dir():
                ds = _load_local_dir(path, configs, split)
            else:
                ds = _read_files([path])
                if configs is not None and "category" in ds.column_names:
                    ds = ds.filter(lambda c: c in configs, input_columns="category")
            base = str(path if path.is_dir() else path.parent)
        elif source.count("/") == 1 and not Path(source).suffix and not source.startswith((".", "/")):
            ds = _load_hub(source, configs, split)
        else:
            raise BeaverTailsUnavailableError(
                f"{source!r} is neither 'mini', an existing file or folder, nor a hub id like {HUB_ID!r}"
            )
    if is_single_response_layout(ds.column_names):
        if not allow_single_response:
            raise SingleResponseLayoutError(_single_layout_message())
        warnings.warn(_single_layout_message(), UserWarning, stacklevel=2)
        report = ValidationReport(n_records=len(ds))
        return (ds, report) if return_report else ds
    ds, report = validate_dataset(ds, on_error, check_images=check_images, base_dir=base, warn=True)
    first = list(PAIR_FIELDS) + (["context"] if "context" in ds.column_names else [])
    order = first + [c for c in ds.column_names if c not in first]
    if order != ds.column_names:
        ds = ds.select_columns(order)
    return (ds, report) if return_report else ds


def load_preference_data(cfg: DataConfig, split: str = "train", on_error: str = "raise") -> Dataset:
    """The preference pairs a config points at: the generated mini world for ``source="mini"``, else
    :func:`load_beavertails_v` on ``cfg.source`` / ``cfg.configs``."""
    if cfg.source == "mini":
        return load_beavertails_v("mini", cfg.configs, split, on_error, cfg=cfg)
    return load_beavertails_v(cfg.source, cfg.configs, split, on_error)
