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

Integrity: on completion, ``manifest.json`` (written just before ``result.json``) records the size
and sha256 of every file of the artifact. Each use checks them (:func:`verify_artifact`): the sizes
always (a ``stat`` per file), the hashes too for artifacts up to :data:`HASH_LIMIT` bytes (about 30 ms
for an 18 MB tiny-preset artifact), once per process. A mismatch raises :class:`ArtifactCorruptError`
naming the folder, the files and how to rebuild. Artifacts made before manifests existed have none:
they are trusted as they are, silently.
"""

from __future__ import annotations

import fcntl
import hashlib
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

__all__ = ["RESULT", "MANIFEST", "HASH_LIMIT", "ArtifactCorruptError", "artifact_folder", "cached",
           "write_manifest", "verify_artifact"]  # fmt: skip

RESULT = "result.json"
MANIFEST = "manifest.json"
#: artifacts up to this many bytes have their files' sha256 checked on use (larger ones: sizes only).
HASH_LIMIT = 256 * 2**20

#: (folder, manifest mtime) of artifacts whose hashes this process has already checked.
_HASHED: set[tuple[str, int]] = set()


class ArtifactCorruptError(RuntimeError):
    """An artifact's files differ from its ``manifest.json`` (truncated, edited or missing)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """Record ``{"files": {relative path: {"size", "sha256"}}}`` of every file in ``folder`` (but
    ``result.json`` and the manifest itself) into ``folder/manifest.json``."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (RESULT, MANIFEST):
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return write_json_atomic(folder / MANIFEST, {"files": files})


def verify_artifact(folder: Path, *, rebuild: str = "", hashes: bool | None = None) -> None:
    """Check ``folder``'s files against its manifest (no manifest: nothing to check).

    Args:
        rebuild: the command that rebuilds this artifact, for the error message.
        hashes: check the sha256 too; None: when the artifact is at most :data:`HASH_LIMIT` bytes
            and this process has not checked it yet.

    Raises:
        ArtifactCorruptError: a file is missing or its size (or hash) differs.
    """
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return
    files = json.loads(manifest_file.read_text())["files"]
    bad = []
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif (size := path.stat().st_size) != entry["size"]:
            bad.append(f"{rel} ({size} bytes, {entry['size']} recorded)")
    memo = (str(folder.resolve()), manifest_file.stat().st_mtime_ns)
    if hashes is None:
        hashes = memo not in _HASHED and sum(e["size"] for e in files.values()) <= HASH_LIMIT
    if hashes and not bad:
        bad = [f"{rel} (sha256 differs)" for rel, e in files.items() if _sha256(folder / rel) != e["sha256"]]
        if not bad:
            _HASHED.add(memo)
    if bad:
        raise ArtifactCorruptError(
            f"the artifact {folder} is damaged: {'; '.join(bad)} (compared with its {MANIFEST}). "
            f"Rebuild it: {rebuild + ', or ' if rebuild else ''}delete the folder (rm -r {folder}) "
            "and ask for it again."
        )


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
            rebuild = (
                f"python -m saferlhfv.run {name} --preset {cfg.preset} --no-resume (stages.ensure(..., force=True))"
            )
            verify_artifact(folder, rebuild=rebuild)
            return folder, json.loads(result_file.read_text())
        if force and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save(folder / "config.yaml")
        with busy():
            result = build(folder)
        write_manifest(folder)
        write_json_atomic(result_file, result)
        return folder, result
