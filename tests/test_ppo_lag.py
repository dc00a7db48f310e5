"""PPO-Lagrangian end to end on a very small world: resume, the multiplier's direction, two processes."""

import pytest
import torch

from saferlhfv.config import load_config
from saferlhfv.io import read_metrics
from saferlhfv.train.ppo import make_trainer
from tests.helpers import SMALL_MODEL_AND_WORLD, interrupt_and_resume, run_ppo_two_processes, upstream_artifacts

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
    with upstream_artifacts(art, SMALL) as dirs:
        yield art, dirs


def _actor_params(trainer):
    return [p.detach().clone() for p in trainer.policy().parameters()]


def test_resume_continues_exactly(upstream, tmp_path):
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL)
    straight = make_trainer(cfg, out_dir=tmp_path / "a", **dirs)
    before = _actor_params(straight)
    done = straight.train()
    after = _actor_params(straight)
    assert done["iterations"] == 3 and any(not torch.equal(x, y) for x, y in zip(before, after))

    resumed, again = interrupt_and_resume(cfg, dirs, tmp_path / "b")
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
    trainer = make_trainer(cfg, out_dir=tmp_path, **dirs)
    trainer.train()
    lambdas = [r["lambda"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(direction * (b - a) > 0 for a, b in zip([1.0] + lambdas[:-1], lambdas)), lambdas


def test_one_minibatch_runs_each_critic_once_per_iteration_with_the_same_result(upstream, tmp_path, monkeypatch):
    """ppo_epochs 1 and one minibatch: the critics' rollout values come from their update's own forward pass
    (fused_critics). Same weights, losses and lambda as the two-pass path; each critic runs once an iteration."""
    from saferlhfv.train.ppo.trainer import PPOTrainer

    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL + ["ppo.batch_size=4", "ppo.iterations=2"])

    def run(folder):
        trainer = make_trainer(cfg, out_dir=folder, **dirs)
        calls = {"reward": 0, "cost": 0}
        for name in calls:
            critic = getattr(trainer.roles, f"{name}_critic")
            forward = critic.forward

            def counted(*args, _name=name, _forward=forward, **kwargs):
                calls[_name] += 1
                return _forward(*args, **kwargs)

            monkeypatch.setattr(critic, "forward", counted)
        trainer.train()
        weights = [p.detach().clone() for role in ("actor", "reward_critic", "cost_critic")
                   for p in getattr(trainer.roles, role).parameters()]  # fmt: skip
        return trainer.fused_critics, calls, weights, read_metrics(folder / "metrics.jsonl")

    fused, fused_calls, fused_weights, fused_log = run(tmp_path / "fused")
    monkeypatch.setattr(PPOTrainer, "fused_critics", property(lambda self: False))
    two_pass, calls, weights, log = run(tmp_path / "two-pass")
    assert fused and not two_pass
    assert fused_calls == {"reward": 2, "cost": 2} and calls == {"reward": 4, "cost": 4}  # 2 iterations
    for x, y in zip(fused_weights, weights, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_log, log, strict=True):
        for key in ("reward_critic_loss", "cost_critic_loss", "actor_loss", "lambda", "reward", "cost"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert any(not torch.equal(x, y) for x, y in zip(fused_weights, _initial_critics(cfg, dirs, tmp_path)))


def _initial_critics(cfg, dirs, folder):
    trainer = make_trainer(cfg, out_dir=folder / "initial", **dirs)
    return [p.detach().clone() for role in ("actor", "reward_critic", "cost_critic")
            for p in getattr(trainer.roles, role).parameters()]  # fmt: skip


def test_the_precursor_is_evaluated_once_per_seed_and_read_back_unchanged(upstream, tmp_path, monkeypatch):
    """Every PPO run compares its policy with the precursor's answers. Runs that share the precursor and the
    RL seed (a budget sweep, the methods of one seed) share that evaluation through the artifact cache: the
    second run reads exactly what the first generated, and another seed generates its own."""
    from saferlhfv import evaluate
    from saferlhfv.config import apply_overrides
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.train.ppo import run_seed
    from saferlhfv.train.ppo_lag import evaluate_precursor

    _, dirs = upstream
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "cache"))
    cfg = load_config("tiny", overrides=SMALL)
    roles = make_trainer(cfg, out_dir=tmp_path / "run", **dirs).roles
    prompts = rl_prompts(cfg.data, "evaluation")
    kwargs = dict(max_new_tokens=cfg.ppo.max_new_tokens, seed=run_seed(cfg) + 17, return_samples=True)
    direct = {"sampled": evaluate.evaluate_policy(roles.reference, roles.processor, prompts, **kwargs),
              "greedy": evaluate.evaluate_policy(roles.reference, roles.processor, prompts, do_sample=False,
                                                 **kwargs)}  # fmt: skip
    first = evaluate_precursor(cfg, roles.reference, roles.processor, prompts, sft_dir=dirs["sft_dir"])
    for mode, (summary, samples) in direct.items():
        assert first[mode] == {"summary": summary, "samples": samples}, mode
    assert first["sampled"]["samples"] != first["greedy"]["samples"]

    def evaluated_again(*args, **kwargs):
        raise AssertionError("the precursor was evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_policy", evaluated_again)
    other_method = apply_overrides(cfg, {"ppo.algorithm": "grpo_lag", "ppo.threshold": 1.0})
    assert evaluate_precursor(other_method, roles.reference, roles.processor, prompts, sft_dir=dirs["sft_dir"]) == first
    other_seed = apply_overrides(cfg, {"ppo.seed": cfg.ppo.seed + 1})
    with pytest.raises(AssertionError, match="evaluated again"):
        evaluate_precursor(other_seed, roles.reference, roles.processor, prompts, sft_dir=dirs["sft_dir"])


def test_reward_only_keeps_lambda_at_zero(upstream, tmp_path):
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL + ["ppo.algorithm=reward_only", "ppo.iterations=2"])
    make_trainer(cfg, out_dir=tmp_path, **dirs).train()
    assert [r["lambda"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0.0, 0.0]


def test_two_processes_agree(upstream, tmp_path):
    """torchrun with 2 CPU processes (gloo): same lambda and actor weights on both ranks, clean exit."""
    art, _ = upstream
    result = run_ppo_two_processes(art, tmp_path / "ppo", SMALL)
    assert result["processes"] == 2 and result["ranks_agree"] is True
    assert result["iterations"] == 3


def test_a_dying_rank_stops_the_other_within_a_minute(upstream, tmp_path):
    """Rank 1 raises mid-run (its second iteration); rank 0, waiting in a collective, must not hang: the
    launcher stops it and the run exits with an error naming the failure, in well under a minute."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    art, _ = upstream
    script = Path(__file__).with_name("dying_rank.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    cmd += ["ppo", "--preset", "tiny", "--out", str(tmp_path / "ppo")]
    for item in SMALL:
        cmd += ["--set", item]
    env = dict(os.environ, SAFERLHFV_ARTIFACTS=str(art), OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "rank 1 dies on purpose" in proc.stderr
    assert elapsed < 60, f"the surviving rank took {elapsed:.0f} s to stop"
    assert not (tmp_path / "ppo" / "result.json").exists()  # no result from a failed run
