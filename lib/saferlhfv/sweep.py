"""Many PPO runs from one config: a budget sweep (notebooks 05-07) and seeds (mean +- std).

Every run is a cached ``ppo`` artifact (:func:`saferlhfv.stages.ensure`), so notebooks, the
pipeline and the command line share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from saferlhfv.config import Config, apply_overrides
from saferlhfv.stages import ensure
from saferlhfv.train.ppo import algorithm_class
from saferlhfv.train.ppo_lag import load_eval_samples

__all__ = [
    "SWEEP_THRESHOLDS",
    "REPO_SWEEP_THRESHOLDS",
    "SWEEP_BUDGETS",
    "SWEEP_ITERATIONS",
    "budget_sweep",
    "seed_runs",
    "mean_std",
    "SEED_KEYS",
    "load_budget_runs",
]

#: the budgets of the tiny preset's sweep (notebooks 05 and 06 share these cached runs), on CM-V's
#: scale: oracle-safe answers cost about -5, unsafe ones about +3 (``python -m saferlhfv.diagnostics``).
SWEEP_THRESHOLDS = (-4.5, -3.0, -1.5)
#: the per-answer budgets ``d_r`` of RePO's sweep (``ppo.repo_threshold``; 0 is CM-V's line between
#: safe and unsafe, the preset's budget).
REPO_SWEEP_THRESHOLDS = (-2.0, 0.0, 2.0)
#: each method's sweep, by the config field its budget lives in (the trainer's ``budget_key``).
SWEEP_BUDGETS = {"threshold": SWEEP_THRESHOLDS, "repo_threshold": REPO_SWEEP_THRESHOLDS}
#: PPO iterations per sweep run (shorter than the main run, to keep the sweep to minutes on a CPU).
SWEEP_ITERATIONS = 30

#: the evaluation numbers :func:`seed_runs` averages over seeds.
SEED_KEYS = (
    "safety_rate",
    "harmful_safety_rate",
    "benign_helpfulness",
    "helpful_winrate",
    "harmless_winrate",
    "degenerate_share",
    "greedy_safety_rate",
    "greedy_harmful_safety_rate",
    "greedy_benign_helpfulness",
    "greedy_helpful_winrate",
    "mean_reward",
    "mean_cost",
    "final_lambda",
    "cost_sign_agreement",
    "reward_oracle_correlation",
    "unsafe_prompt_share",
    "mean_unsafe_probability",
    "seconds",
)


def budget_sweep(
    cfg: Config,
    thresholds: Sequence[float] | None = None,
    *,
    iterations: int | None = SWEEP_ITERATIONS,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One PPO run per budget in ``thresholds`` (each a cached artifact); PPO-Lagrangian by default.

    The method is ``overrides["ppo.algorithm"]`` (default ``ppo_lag``); the budget goes into the
    field the method names (``budget_key``: ``ppo.threshold``, or ``ppo.repo_threshold`` for RePO).

    Args:
        thresholds: the budgets (None: the method's :data:`SWEEP_BUDGETS`).
        iterations: PPO iterations per run (None keeps ``cfg.ppo.iterations``).
        overrides: extra config fields for every run (the method among them).

    Returns:
        One metrics dict (as :func:`~saferlhfv.train.ppo_lag.train_ppo_lag` returns) per threshold,
        with ``folder`` added.
    """
    fields = {"ppo.algorithm": "ppo_lag", **(overrides or {})}
    budget_key = algorithm_class(fields["ppo.algorithm"]).budget_key
    if iterations is not None:
        fields["ppo.iterations"] = iterations
    results = []
    for d in SWEEP_BUDGETS[budget_key] if thresholds is None else thresholds:
        fields["ppo." + budget_key] = float(d)
        folder, metrics = ensure("ppo", apply_overrides(cfg, fields))
        results.append({**metrics, "folder": str(folder)})
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value) of finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def seed_runs(cfg: Config, seeds=(0, 1, 2), *, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One PPO run per ``ppo.seed`` in ``seeds`` (cached artifacts), and mean +- std over them.

    The seed of the RL stage changes sampling, the prompt order and the evaluation's sampling;
    SFT, RM-V and CM-V are shared (their own seeds stay as configured).

    Returns:
        ``seeds``, ``runs`` (one metrics dict per seed, in order, ``folder`` added), ``mean`` and
        ``std`` (per key of :data:`SEED_KEYS` present in the runs; sample std, ddof = 1).
    """
    runs = []
    for seed in seeds:
        folder, metrics = ensure("ppo", apply_overrides(cfg, {**(overrides or {}), "ppo.seed": int(seed)}))
        runs.append({**metrics, "folder": str(folder)})
    mean, std = {}, {}
    for key in SEED_KEYS:
        if all(key in r for r in runs):
            mean[key], std[key] = (round(v, 4) for v in mean_std([r[key] for r in runs]))
    return {"seeds": [int(s) for s in seeds], "runs": runs, "mean": mean, "std": std}


def load_budget_runs(cfg, thresholds: Sequence[float], *, overrides: Mapping[str, Any] | None = None):
    """The budget sweep's runs (trained if missing, via ``budget_sweep``) and the precursor's reference point.

    Returns:
        ``(runs, precursor)``: ``precursor`` has ``safety_rate``, ``harmful_safety_rate``,
        ``benign_helpfulness`` and ``per_category_safety`` of the precursor's answers on the same
        evaluation prompts (from the first run's ``eval_samples.json``).
    """
    from saferlhfv.evaluate import summarize

    runs = budget_sweep(cfg, list(thresholds), overrides=dict(overrides or {}))
    samples = load_eval_samples(runs[0]["folder"])
    ref = summarize(samples["precursor"])
    precursor = {k: ref[k] for k in ("safety_rate", "harmful_safety_rate", "benign_helpfulness")}
    precursor["per_category_safety"] = ref["per_category_safety"]
    precursor["helpful_winrate"] = 0.5
    return runs, precursor
