"""The artifact cache: built once, reused, rebuilt on a config change, safe under concurrency."""

import multiprocessing as mp
import time

from saferlhfv.artifacts import cached
from saferlhfv.config import load_config
from saferlhfv.stages import artifact_dir, config_sections


def ensure_artifact(cfg, stage, build):
    """The cache as :func:`saferlhfv.stages.ensure` uses it for ``stage``, with a fake build."""
    return cached(cfg, stage, cfg.fingerprint(*config_sections(stage)), build)


def _counting_build(counter):
    def build(folder):
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        (folder / "model.txt").write_text("weights")
        return {"accuracy": 0.9}

    return build


def test_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "art"))
    cfg, counter = load_config("tiny"), tmp_path / "count"
    folder, result = ensure_artifact(cfg, "sft", _counting_build(counter))
    again, result2 = ensure_artifact(cfg, "sft", _counting_build(counter))
    assert folder == again and result == result2 == {"accuracy": 0.9} and counter.read_text() == "x"
    assert (folder / "config.yaml").is_file()


def test_key_follows_the_sections_a_stage_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path))
    base = load_config("tiny")
    assert artifact_dir(base, "sft") == artifact_dir(load_config("tiny", {"ppo.lambda_lr": 0.5}), "sft")
    assert artifact_dir(base, "sft") != artifact_dir(load_config("tiny", {"sft.epochs": 9}), "sft")
    assert artifact_dir(base, "reward") != artifact_dir(load_config("tiny", {"sft.epochs": 9}), "reward")
    assert artifact_dir(base, "reward") == artifact_dir(load_config("tiny", {"cost.reg": 0.5}), "reward")
    assert config_sections("ppo") == ("seed", "model", "data", "sft", "reward", "cost", "ppo")
    assert config_sections("guard") == ("seed", "model", "data", "sft", "guard", "guardrail")
    assert config_sections("guard_model") == ("seed", "model", "data", "sft", "guard")


def _worker(art, counter):
    import os

    os.environ["SAFERLHFV_ARTIFACTS"] = art
    ensure_artifact(load_config("tiny"), "reward", _counting_build(counter))


def test_two_processes_asking_at_once_build_once(tmp_path):
    counter = tmp_path / "count"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "art"), str(counter))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.read_text() == "x"
