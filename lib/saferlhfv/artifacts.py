"""The artifact cache: train a stage once, reuse it from notebooks and later stages.

An artifact is a folder ``artifacts/<preset>/<stage>-<key>/`` where ``key`` hashes
every config section the stage depends on (its own and its upstream stages'),
plus the package version. Change any of them and the key changes, so the stage
trains again; change an unrelated section (say ``ppo``) and SFT is reused.

A stage is complete when its ``result.json`` exists (written last, atomically).
A file lock (``fcntl.flock``) makes two processes asking for the same artifact
at once safe: the second waits, then finds the first one's result. A stage that
was interrupted resumes from its checkpoint the next time it is asked for.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saferlhfv import __version__
from saferlhfv.config import Config
from saferlhfv.io import write_json_atomic
from saferlhfv.paths import artifacts_dir

__all__ = ["STAGE_SECTIONS", "artifact_dir", "ensure_artifact", "RESULT"]

RESULT = "result.json"

#: the config sections each stage's artifact depends on (its own and upstream ones).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "sft": ("seed", "model", "data", "sft"),
    "reward": ("seed", "model", "data", "sft", "reward"),
    "cost": ("seed", "model", "data", "sft", "cost"),
    "guard": ("seed", "model", "data", "sft", "guard"),
    "ppo": ("seed", "model", "data", "sft", "reward", "cost", "ppo"),
}


def artifact_dir(cfg: Config, stage: str) -> Path:
    """Folder of ``stage``'s artifact for ``cfg`` (not created)."""
    if stage not in STAGE_SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGE_SECTIONS)}")
    key = cfg.fingerprint(*STAGE_SECTIONS[stage])
    return artifacts_dir() / cfg.preset / f"{stage}-{key}-v{__version__}"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_artifact(
    cfg: Config, stage: str, build: Callable[[Path], dict[str, Any]], *, force: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Return ``(folder, result)`` of ``stage``, running ``build(folder)`` first if needed.

    Args:
        build: trains the stage into the folder it is given and returns its metrics
            (JSON-serialisable); it may resume from a checkpoint it finds there.
        force: rebuild even if a complete artifact exists.
    """
    folder = artifact_dir(cfg, stage)
    with _locked(folder.parent / f".{folder.name}.lock"):
        result_file = folder / RESULT
        if result_file.is_file() and not force:
            return folder, json.loads(result_file.read_text())
        if force and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save(folder / "config.yaml")
        result = build(folder)
        write_json_atomic(result_file, result)
        return folder, result
