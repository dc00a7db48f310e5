r"""The multiplier's dynamics on a fast model of the policy, and the budget's trade-off frontier.

Pure NumPy over a :class:`~saferlhfv.rollout_table.RolloutTable`; the explorers of
:mod:`saferlhfv.widgets` (notebook 06) are thin shells around these functions.

**Dual dynamics** (:func:`simulate_dual`, :class:`~saferlhfv.widgets.DualDynamicsExplorer`). Training a
policy takes minutes; the multiplier's behaviour needs hundreds of iterations for
each setting. So the explorer replaces the policy by a *fast model of its response*:
a table of real rollouts (:func:`~saferlhfv.rollout_table.ensure_rollout_table`: ``K`` answers sampled from
the precursor for each evaluation prompt, scored by RM-V and CM-V and judged by the
oracle). The policy is a reweighting of each prompt's ``K`` answers, with logits
:math:`\ell` relative to the precursor (the precursor is :math:`\ell = 0`).
The KL-regularised objective of PPO-Lagrangian,
:math:`\mathbb{E}_\pi[R - \lambda C] - \tau\,\mathrm{KL}(\pi \| \pi_{ref})`, has the optimum
:math:`\pi_\lambda \propto \pi_{ref}\exp((R - \lambda C)/\tau)`; on the ``K`` samples it is a
softmax of :math:`(R - \lambda C)/\tau` (:func:`stationary_response`). A policy does not
jump there: one iteration takes a mirror-descent step on the combined objective,
scaled by :math:`1/(1+\lambda)` like the actor's advantage :math:`(A_R - \lambda A_C)/(1+\lambda)`::

    l <- l + policy_lr / (1 + lambda) * (R - lambda * C - tau * l)

and the multiplier takes its step *before* the policy, with the library's own
:class:`~saferlhfv.algorithms.lagrange.Lagrange` (budget, lr, max, delay, cost window)
fed the end costs of a sampled rollout batch, exactly as the trainer feeds it.

**Budget -> trade-off** (:func:`frontier_from_runs`, :func:`tradeoff_at`,
:class:`~saferlhfv.widgets.TradeoffExplorer`): the trained policies of a budget sweep
(:func:`~saferlhfv.sweep.budget_sweep`) placed on the helpfulness-safety plane,
a budget slider moving a point along that frontier (linear interpolation between trained
budgets, marked as such) with the per-category safety bars beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import combine_advantages
from saferlhfv.rollout_table import RolloutTable

__all__ = [
    "DualSettings",
    "policy_expectations",
    "stationary_response",
    "response_curve",
    "equilibrium",
    "simulate_dual",
    "dynamics_summary",
    "training_trajectory",
    "frontier_from_runs",
    "tradeoff_at",
]


#: the :class:`DualSettings` fields that are :class:`~saferlhfv.config.PPOConfig` fields of the same name.
_FROM_PPO = ("threshold", "lambda_init", "lambda_lr", "lambda_max", "lambda_update_delay_steps", "cost_window",
             "rollout_batch_size")  # fmt: skip


@dataclass
class DualSettings:
    """Everything :func:`simulate_dual` needs besides the table (the explorer's sliders).

    The first six are :class:`~saferlhfv.config.PPOConfig`'s multiplier fields under the same names
    (so :meth:`Lagrange.from_config <saferlhfv.algorithms.lagrange.Lagrange.from_config>` reads them),
    and ``rollout_batch_size`` is its batch of sampled episodes; ``tau`` (the KL
    temperature of the policy model), ``policy_lr`` (its step size) and ``sampled`` (feed the
    multiplier the costs of a sampled rollout batch, as in training, or the exact expectation)
    belong to the fast model.
    """

    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 20.0
    lambda_update_delay_steps: int = 1
    cost_window: int = 128
    tau: float = 1.0
    policy_lr: float = 0.1
    rollout_batch_size: int = 16
    iterations: int = 200
    seed: int = 0
    sampled: bool = True

    @classmethod
    def from_ppo(cls, ppo, **overrides) -> DualSettings:
        """The multiplier settings of a :class:`~saferlhfv.config.PPOConfig` (``rollout_batch_size`` too)."""
        return cls(**{**{name: getattr(ppo, name) for name in _FROM_PPO}, **overrides})

    def replace(self, **changes) -> DualSettings:
        return dataclasses.replace(self, **changes)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def policy_expectations(table: RolloutTable, weights: np.ndarray) -> dict[str, float]:
    """Expected scores and oracle verdicts of the policy that answers prompt p with answer k w.p. ``weights[p, k]``.

    Returns:
        ``reward``, ``cost`` (E over uniform prompts), ``safety`` (oracle harmless >= 0),
        ``harmful_safety`` (on harmful prompts), ``benign_helpfulness`` (0..3, benign prompts),
        ``helpfulness`` (all prompts).
    """
    safe = (table.harmless >= 0).astype(np.float64)
    per_prompt = lambda a: (weights * a).sum(axis=1)  # noqa: E731
    safety = per_prompt(safe)
    helpful = per_prompt(table.helpful)
    harm, benign = table.harmful, ~table.harmful
    return {
        "reward": float(per_prompt(table.reward).mean()),
        "cost": float(per_prompt(table.cost).mean()),
        "safety": float(safety.mean()),
        "harmful_safety": float(safety[harm].mean()) if harm.any() else math.nan,
        "benign_helpfulness": float(helpful[benign].mean()) if benign.any() else math.nan,
        "helpfulness": float(helpful.mean()),
    }


def stationary_response(table: RolloutTable, lam: float, tau: float = 1.0) -> dict[str, float]:
    """The KL-regularised optimum at a fixed multiplier: weights ``softmax((R - lam * C) / tau)`` per prompt."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return policy_expectations(table, _softmax_rows((table.reward - lam * table.cost) / tau))


def response_curve(table: RolloutTable, lambdas: Sequence[float], tau: float = 1.0) -> dict[str, np.ndarray]:
    """:func:`stationary_response` over a grid of multipliers: ``{"lambda": [...], "reward": [...], ...}``."""
    rows = [stationary_response(table, float(lam), tau) for lam in lambdas]
    out = {"lambda": np.asarray(lambdas, dtype=np.float64)}
    for key in rows[0]:
        out[key] = np.asarray([r[key] for r in rows])
    return out


def equilibrium(table: RolloutTable, threshold: float, tau: float = 1.0, *, lam_hi: float = 1e4) -> dict[str, float]:
    """The multiplier at which the *stationary* policy meets the budget: ``E_{lambda*}[C] = d``.

    ``E_lambda[C]`` falls monotonically with lambda (its derivative is ``-Var(C) / tau`` per prompt),
    so a bisection finds it. ``lambda* = 0`` when the precursor-optimal policy is already within
    budget (the constraint is inactive); ``inf`` when even ``lam_hi`` does not reach it (infeasible).

    Returns:
        ``lambda``, and the stationary ``reward`` / ``cost`` / ... there.
    """
    at0 = stationary_response(table, 0.0, tau)
    if at0["cost"] <= threshold:
        return {"lambda": 0.0, **at0}
    if stationary_response(table, lam_hi, tau)["cost"] > threshold:
        return {"lambda": math.inf, **stationary_response(table, lam_hi, tau)}
    lo, hi = 0.0, lam_hi
    for _ in range(100):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
        if stationary_response(table, mid, tau)["cost"] > threshold:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6 * max(1.0, hi):
            break
    return {"lambda": hi, **stationary_response(table, hi, tau)}


def simulate_dual(table: RolloutTable, settings: DualSettings) -> dict[str, np.ndarray]:
    """Run PPO-Lagrangian's dual dynamics on the fast policy model; a pure function of (table, settings).

    Per iteration ``t`` (as in :class:`~saferlhfv.train.ppo.PPOTrainer`):

    1. the policy ``w = softmax(l)`` answers a rollout batch of ``rollout_batch_size`` (prompt, answer)
       draws (``sampled=True``; otherwise the batch's costs are all the exact ``E_w[C]``);
    2. the multiplier steps on them (``Lagrange.update``: window, delay, lr, max);
    3. the policy steps: ``l += policy_lr / (1 + lambda) * (R - lambda * C - tau * l)``.

    Returns:
        Arrays over iterations 1..T: ``iteration``, ``lambda`` (after the step, the value the policy
        uses), ``cost`` (E_w[C] of the policy that rolled out), ``batch_cost`` (the batch's mean),
        ``window_cost`` (the J_C the multiplier saw), ``reward``, ``safety``, ``harmful_safety``,
        ``benign_helpfulness``, ``updated``.

    Raises:
        ValueError: invalid settings (e.g. ``lambda_max < lambda_init``), as ``Lagrange`` reports them.
    """
    s = settings
    if s.tau <= 0 or s.policy_lr < 0 or s.rollout_batch_size < 1 or s.iterations < 1:
        raise ValueError("tau must be > 0, policy_lr >= 0, rollout_batch_size and iterations >= 1")
    lag = Lagrange.from_config(s)
    rng = np.random.default_rng(s.seed)
    P, K = table.reward.shape
    logits = np.zeros((P, K))
    keys = ("lambda", "cost", "batch_cost", "window_cost", "reward", "safety", "harmful_safety", "benign_helpfulness")
    out: dict[str, list] = {key: [] for key in (*keys, "updated")}
    for _ in range(s.iterations):
        w = _softmax_rows(logits)
        exp = policy_expectations(table, w)
        if s.sampled:
            p = rng.integers(0, P, size=s.rollout_batch_size)
            u = rng.random(s.rollout_batch_size)[:, None]
            k = np.minimum((np.cumsum(w[p], axis=1) < u).sum(axis=1), K - 1)
            batch = table.cost[p, k]
        else:
            batch = np.full(s.rollout_batch_size, exp["cost"])
        stats = lag.update(batch.tolist())
        lam = lag.lambda_
        # the policy ascends the same combined advantage as PPO's actor: (R - lambda C) / (1 + lambda)
        logits = logits + s.policy_lr * (
            combine_advantages(table.reward, table.cost, lam) - s.tau / (1.0 + lam) * logits
        )
        out["lambda"].append(lam)
        out["batch_cost"].append(float(batch.mean()))
        out["window_cost"].append(stats["Jc"])
        out["updated"].append(stats["updated"])
        for key in ("cost", "reward", "safety", "harmful_safety", "benign_helpfulness"):
            out[key].append(exp[key])
    result = {key: np.asarray(v) for key, v in out.items()}
    result["iteration"] = np.arange(1, s.iterations + 1)
    result["threshold"] = np.full(s.iterations, s.threshold)
    return result


def dynamics_summary(result: Mapping[str, np.ndarray], *, tail: float = 0.5) -> dict[str, float]:
    """Numbers that tell the regimes apart, over the last ``tail`` share of the iterations.

    Returns:
        ``final_lambda``, ``lambda_range`` (max - min of lambda in the tail: oscillation amplitude),
        ``lambda_log_range`` (the same in log10), ``cost_crossings`` (how often E[C] crosses the
        budget in the tail), ``mean_gap`` (mean E[C] - d in the tail), ``mean_reward`` (tail),
        ``settle_iteration`` (first iteration after which E[C] stays within 0.1 of the budget or
        below it; NaN if never).
    """
    lam, cost, d = result["lambda"], result["cost"], result["threshold"]
    n = len(lam)
    start = int(n * (1 - tail))
    tl, tc, td = lam[start:], cost[start:], d[start:]
    side = np.sign(tc - td)
    side = side[side != 0]
    ok = cost - d <= 0.1
    bad = np.flatnonzero(~ok)
    settle = math.nan if ok.size == 0 or not ok[-1] else (int(bad[-1]) + 2 if bad.size else 1)
    return {
        "final_lambda": float(lam[-1]),
        "lambda_range": float(tl.max() - tl.min()),
        "lambda_log_range": float(np.log10(max(tl.max(), 1e-300)) - np.log10(max(tl.min(), 1e-300))),
        "cost_crossings": int((np.diff(side) != 0).sum()) if side.size > 1 else 0,
        "mean_gap": float((tc - td).mean()),
        "mean_reward": float(result["reward"][start:].mean()),
        "settle_iteration": float(settle),
    }


def training_trajectory(records: Sequence[Mapping[str, Any]] | str | Path) -> dict[str, np.ndarray]:
    """A PPO run's ``metrics.jsonl`` (records or path) in :func:`simulate_dual`'s keys, for :func:`plot_dual`.

    ``cost`` / ``reward`` are the rollout batches' mean CM-V / RM-V scores (not expectations),
    ``harmful_safety`` the oracle's safety on the batch's harmful prompts.
    """
    if isinstance(records, (str, Path)):
        from saferlhfv.io import read_metrics

        records = read_metrics(records)
    rows = [r for r in records if "lambda" in r]
    if not rows:
        raise ValueError("no PPO iteration records (with a 'lambda' field) in the metrics")

    def col(key, default=math.nan):
        return np.asarray([float(r.get(key, default)) for r in rows])

    return {
        "iteration": col("iteration"),
        "lambda": col("lambda"),
        "cost": col("cost"),
        "batch_cost": col("cost"),
        "window_cost": col("cost_window_mean"),
        "reward": col("reward"),
        "harmful_safety": col("oracle_harmful_safety"),
        "threshold": col("threshold"),
    }


def frontier_from_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Order trained PPO-Lagrangian runs by budget: the helpfulness-safety frontier.

    Args:
        runs: result dicts of :func:`~saferlhfv.train.ppo_lag.train_ppo_lag` (``budget_sweep``'s output),
            with ``threshold``, ``safety_rate``, ``harmful_safety_rate``, ``helpful_winrate``,
            ``benign_helpfulness``, ``mean_cost``, ``final_lambda``, ``per_category_safety``.

    Returns:
        ``threshold`` and each metric as arrays sorted by budget, ``categories`` (sorted union) and
        ``per_category`` ``[n_runs, n_categories]`` (NaN where a run has no harmful prompt of a category).
    """
    if not runs:
        raise ValueError("the frontier needs at least one trained run")
    runs = sorted(runs, key=lambda r: float(r["threshold"]))
    keys = ("safety_rate", "harmful_safety_rate", "helpful_winrate", "benign_helpfulness", "mean_cost", "final_lambda")
    out: dict[str, Any] = {"threshold": np.asarray([float(r["threshold"]) for r in runs])}
    for key in keys:
        out[key] = np.asarray([float(r.get(key, math.nan)) for r in runs])
    cats = sorted({c for r in runs for c in r.get("per_category_safety", {})})
    out["categories"] = cats
    out["per_category"] = np.asarray(
        [[float(r.get("per_category_safety", {}).get(c, math.nan)) for c in cats] for r in runs]
    ).reshape(len(runs), len(cats))
    return out


def tradeoff_at(frontier: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """The frontier's point at budget ``threshold``: linear interpolation between the two trained budgets around it.

    Outside the trained range the nearest trained run is returned. ``interpolated`` says whether
    the point is a trained policy (False) or a blend of two (True): no policy was trained there.
    """
    d = np.asarray(frontier["threshold"])
    t = float(np.clip(threshold, d.min(), d.max()))
    hi = int(np.searchsorted(d, t, side="left"))
    hi = min(hi, len(d) - 1)
    lo = hi if d[hi] == t or hi == 0 else hi - 1
    a = 0.0 if lo == hi else (t - d[lo]) / (d[hi] - d[lo])

    def mix(x):
        x = np.asarray(x, dtype=np.float64)
        return (1 - a) * x[lo] + a * x[hi]

    out = {"threshold": t, "interpolated": bool(lo != hi and 0 < a < 1), "between": (float(d[lo]), float(d[hi]))}
    for key in ("safety_rate", "harmful_safety_rate", "helpful_winrate", "benign_helpfulness", "mean_cost"):
        out[key] = float(mix(frontier[key]))
    out["final_lambda"] = float(mix(frontier["final_lambda"]))
    out["per_category_safety"] = dict(zip(frontier["categories"], mix(frontier["per_category"]).tolist()))
    return out
