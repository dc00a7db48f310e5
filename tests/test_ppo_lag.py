"""PPO-Lagrangian end to end on a very small world: resume, the multiplier's direction, two processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from saferlhfv.artifacts import RESULT
from saferlhfv.config import load_config
from saferlhfv.plotting import read_metrics
from saferlhfv.train.ppo_lag import PPOLagTrainer
from saferlhfv.train.preference import ensure_preference_model
from saferlhfv.train.sft import ensure_sft
from tests.helpers import SMALL_MODEL_AND_WORLD

SMALL = SMALL_MODEL_AND_WORLD + [
    "sft.max_steps=6",
    "reward.max_steps=3",
    "cost.max_steps=3",
    "ppo.iterations=3",
    "ppo.save_every=1",
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """SFT, RM-V and CM-V artifacts of a very small run (trained once for this module)."""
    art = tmp_path_factory.mktemp("artifacts")
    old = os.environ.get("SAFERLHFV_ARTIFACTS")
    os.environ["SAFERLHFV_ARTIFACTS"] = str(art)
    try:
        cfg = load_config("tiny", overrides=SMALL)
        dirs = {
            "sft_dir": ensure_sft(cfg)[0],
            "reward_dir": ensure_preference_model(cfg, "reward")[0],
            "cost_dir": ensure_preference_model(cfg, "cost")[0],
        }
        yield art, dirs
    finally:
        if old is None:
            os.environ.pop("SAFERLHFV_ARTIFACTS", None)
        else:
            os.environ["SAFERLHFV_ARTIFACTS"] = old


def _actor_params(trainer):
    return [p.detach().clone() for p in trainer._unwrap(trainer.actor).parameters()]


def test_resume_continues_exactly(upstream, tmp_path):
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL)
    straight = PPOLagTrainer(cfg, out_dir=tmp_path / "a", **dirs)
    before = _actor_params(straight)
    done = straight.train()
    after = _actor_params(straight)
    assert done["iterations"] == 3 and any(not torch.equal(x, y) for x, y in zip(before, after))

    interrupted = PPOLagTrainer(cfg, out_dir=tmp_path / "b", **dirs)
    interrupted.train(stop_after=2)
    resumed = PPOLagTrainer(cfg, out_dir=tmp_path / "b", **dirs)
    again = resumed.train()
    assert again["iterations"] == 3 and again["final_lambda"] == pytest.approx(done["final_lambda"], rel=1e-9)
    for x, y in zip(after, _actor_params(resumed)):
        torch.testing.assert_close(x, y)
    assert [r["iteration"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("threshold, direction", [(-5.0, 1), (5.0, -1)])  # end costs here are about -2.4
def test_lambda_rises_over_budget_and_falls_under(upstream, tmp_path, threshold, direction):
    _, dirs = upstream
    cfg = load_config(
        "tiny",
        overrides=SMALL
        + [f"ppo.threshold={threshold}", "ppo.lambda_update_delay_steps=0", "ppo.lambda_init=1", "ppo.lambda_max=null"],
    )
    trainer = PPOLagTrainer(cfg, out_dir=tmp_path, **dirs)
    trainer.train()
    lambdas = [r["lambda"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(direction * (b - a) > 0 for a, b in zip([1.0] + lambdas[:-1], lambdas)), lambdas


def test_reward_only_keeps_lambda_at_zero(upstream, tmp_path):
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL + ["ppo.lambda_mode=reward_only", "ppo.iterations=2"])
    PPOLagTrainer(cfg, out_dir=tmp_path, **dirs).train()
    assert [r["lambda"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0.0, 0.0]


def test_two_processes_agree(upstream, tmp_path):
    """torchrun with 2 CPU processes (gloo): same lambda and actor weights on both ranks, clean exit."""
    art, _ = upstream
    out = tmp_path / "ppo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "saferlhfv.train.ppo_lag", "--preset", "tiny", "--out", str(out)]
    for item in SMALL:
        cmd += ["--set", item]
    env = dict(os.environ, SAFERLHFV_ARTIFACTS=str(art), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / RESULT).read_text())
    assert result["processes"] == 2 and result["ranks_agree"] is True
    assert result["iterations"] == 3
