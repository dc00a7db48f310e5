"""Budget sweeps pick each method's own budget field and values (no training: ``ensure`` is recorded)."""

from pathlib import Path

from saferlhfv import sweep
from saferlhfv.config import load_config
from saferlhfv.stages import PPO_METHODS


def _recorded(monkeypatch) -> list:
    """Replace the sweep's ``ensure`` by one that records the configs it is asked for."""
    asked = []

    def fake_ensure(name, cfg):
        asked.append(cfg)
        return Path(f"/runs/{len(asked)}"), {"threshold": None}

    monkeypatch.setattr(sweep, "ensure", fake_ensure)
    return asked


def test_each_method_sweeps_its_own_budget(monkeypatch):
    cfg = load_config("tiny")
    asked = _recorded(monkeypatch)
    sweep.budget_sweep(cfg, overrides=PPO_METHODS["ppo_grpo_repo"])
    # RePO's budget is the per-answer d_r; the expected-cost budget d stays the preset's
    assert [c.ppo.repo_threshold for c in asked] == list(sweep.REPO_SWEEP_THRESHOLDS)
    assert {c.ppo.threshold for c in asked} == {cfg.ppo.threshold}
    assert {(c.ppo.algorithm, c.ppo.lambda_max, c.ppo.iterations) for c in asked} == {
        ("grpo_repo", 3.0, sweep.SWEEP_ITERATIONS)
    }
    asked.clear()
    runs = sweep.budget_sweep(cfg, overrides=PPO_METHODS["ppo_grpo_lag"])
    assert [c.ppo.threshold for c in asked] == list(sweep.SWEEP_THRESHOLDS)
    assert [r["folder"] for r in runs] == ["/runs/1", "/runs/2", "/runs/3"]
    asked.clear()
    sweep.budget_sweep(cfg, [-2.5])  # PPO-Lagrangian by default, the budgets given
    assert [(c.ppo.algorithm, c.ppo.threshold) for c in asked] == [("ppo_lag", -2.5)]
