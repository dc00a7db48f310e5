"""Artifact integrity: each artifact records its files' sizes and sha256; a damaged one is refused."""

import json

import pytest
import torch
from safetensors.torch import save_file

from saferlhfv import artifacts
from saferlhfv.artifacts import MANIFEST, ArtifactCorruptError, cached
from saferlhfv.config import load_config


def _build(folder):
    (folder / "model").mkdir()
    save_file({"w": torch.arange(256, dtype=torch.float32)}, str(folder / "model" / "model.safetensors"))
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    return {"accuracy": 0.9}


@pytest.fixture
def artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setattr(artifacts, "_HASHED", set())  # a fresh process: nothing checked yet
    cfg = load_config("tiny")
    folder, _ = cached(cfg, "reward", "k", _build)
    return cfg, folder


def test_manifest_records_sizes_and_hashes(artifact):
    cfg, folder = artifact
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {"config.yaml", "metrics.jsonl", "model/model.safetensors"}
    assert files["model/model.safetensors"]["size"] == (folder / "model" / "model.safetensors").stat().st_size
    assert len(files["metrics.jsonl"]["sha256"]) == 64
    assert cached(cfg, "reward", "k", _build) == (folder, {"accuracy": 0.9})  # intact: reused


def test_a_truncated_weights_file_is_refused_and_force_rebuilds(artifact):
    cfg, folder = artifact
    weights = folder / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactCorruptError) as err:
        cached(cfg, "reward", "k", _build)
    message = str(err.value)
    assert str(folder) in message and "model/model.safetensors (100 bytes" in message
    assert "python -m saferlhfv.run reward --preset tiny --no-resume" in message and f"rm -r {folder}" in message
    rebuilt, result = cached(cfg, "reward", "k", _build, force=True)  # what --no-resume does
    assert rebuilt == folder and result == {"accuracy": 0.9}
    assert cached(cfg, "reward", "k", _build)[0] == folder


def test_same_size_damage_is_caught_by_the_hash(artifact):
    cfg, folder = artifact
    weights = folder / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=r"model/model.safetensors \(sha256 differs\)"):
        cached(cfg, "reward", "k", _build)


def test_a_missing_file_is_refused(artifact):
    cfg, folder = artifact
    (folder / "metrics.jsonl").unlink()
    with pytest.raises(ArtifactCorruptError, match=r"metrics.jsonl \(missing\)"):
        cached(cfg, "reward", "k", _build)


def test_artifacts_without_a_manifest_are_trusted(artifact):
    """Artifacts made before manifests existed keep working as they are."""
    cfg, folder = artifact
    (folder / MANIFEST).unlink()
    (folder / "metrics.jsonl").write_text("")
    assert cached(cfg, "reward", "k", _build) == (folder, {"accuracy": 0.9})
