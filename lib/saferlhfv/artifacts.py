"""The artifact cache: train a stage once, reuse it from notebooks and later stages.

An artifact is a folder ``artifacts/<preset>/<stage>-<key>-v<version>/`` where ``key`` hashes
every config section the stage depends on (its own and its upstream stages', from the
stage table :mod:`saferlhfv.stages`). Change any of them and the key changes, so the stage
trains again; change an unrelated section (say ``ppo``) and SFT is reused. The widgets'
rollout tables are cached the same way (:func:`cached` with their own key).

A stage is complete when its ``result.json`` exists (written last, atomically).
A file lock (``fcntl.flock``) makes two processes asking for the same artifact
at once safe: the second says that it waits (on stderr, naming the builder's pid), then finds
the first one's result instead of building it again. A build counts as a busy job for the
thread policy of :mod:`saferlhfv.threads`. A stage that
was interrupted resumes from its checkpoint the next time it is asked for.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saferlhfv import __version__
from saferlhfv.config import Config
from saferlhfv.io import write_json_atomic
from saferlhfv.paths import artifacts_dir
from saferlhfv.threads import busy, idle

__all__ = ["RESULT", "artifact_folder", "cached"]

RESULT = "result.json"


def artifact_folder(cfg: Config, name: str, key: str) -> Path:
    """``artifacts/<preset>/<name>-<key>-v<version>``: the folder of product ``name`` under cache key ``key``."""
    return artifacts_dir() / cfg.preset / f"{name}-{key}-v{__version__}"


@contextmanager
def _locked(path: Path, what: str):
    """Hold the exclusive lock ``path``; while another process holds it, say so on stderr and wait.

    The holder writes its pid into the lock file, so the waiting message can name it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # "a+": opening must not erase the holder's pid
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            print(f"saferlhfv: waiting for {what}: another process (pid {holder}) is building it; "
                  "it is used as soon as it is done", file=sys.stderr, flush=True)  # fmt: skip
            start = time.monotonic()
            with idle():  # a nested stage waiting here does not count as a busy job
                fcntl.flock(handle, fcntl.LOCK_EX)
            print(f"saferlhfv: {what} is free after {time.monotonic() - start:.0f} s of waiting",
                  file=sys.stderr, flush=True)  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(
    cfg: Config, name: str, key: str, build: Callable[[Path], dict[str, Any]], *, force: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Return ``(folder, result)`` of the product ``name`` / ``key``, running ``build(folder)`` first if needed.

    The stages' artifacts (:func:`saferlhfv.stages.ensure`) and the widgets' rollout tables both
    live here. ``key`` must hash everything the product depends on (for a stage: the config
    sections of :func:`saferlhfv.stages.config_sections`).

    Args:
        build: builds the product into the folder it is given and returns its metrics
            (JSON-serialisable); it may resume from a checkpoint it finds there.
        force: rebuild even if a complete artifact exists.
    """
    folder = artifact_folder(cfg, name, key)
    with _locked(folder.parent / f".{folder.name}.lock", f"{cfg.preset}/{folder.name}"):
        result_file = folder / RESULT
        if result_file.is_file() and not force:
            return folder, json.loads(result_file.read_text())
        if force and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save(folder / "config.yaml")
        with busy():
            result = build(folder)
        write_json_atomic(result_file, result)
        return folder, result
