"""Files: atomic writes (a crash never leaves a half-written checkpoint, model or summary) and the
trainers' metrics logs (``metrics.jsonl``: one JSON record a line)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "write_json_atomic", "read_metrics", "append_metrics", "truncate_metrics"]


@contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A crash inside the block leaves ``path`` as it was and removes the temporary folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` written by a trainer (one dict per line, blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record to a metrics log (the main process of a run calls this)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: str | Path, keep) -> None:
    """Keep only the records for which ``keep(record)`` is true (on resume: drop what will be logged again)."""
    path = Path(path)
    if path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(path) if keep(r)))
