r"""Interactive explorers of notebook 05: the multiplier's dynamics, the budget's trade-off, live samples.

Every widget here is a thin ``ipywidgets`` shell around a **pure library function**
(tested without a browser): a slider change calls the function with the new
settings and redraws the figure from what it returns.

**Dual dynamics** (:func:`simulate_dual`, :class:`DualDynamicsExplorer`). Training a
policy takes minutes; the multiplier's behaviour needs hundreds of iterations for
each setting. So the explorer replaces the policy by a *fast model of its response*:
a table of real rollouts (:func:`ensure_rollout_table`: ``K`` answers sampled from
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
:class:`TradeoffExplorer`): the trained policies of a budget sweep
(:func:`~saferlhfv.train.ppo_lag.budget_sweep`) placed on the helpfulness-safety plane,
a budget slider moving a point along that frontier (linear interpolation between trained
budgets, marked as such) with the per-category safety bars beside it.

**Live sample** (:func:`live_sample`, :class:`LiveSampleExplorer`): one picture and a
question, the precursor's and the aligned policy's answers with their RM-V, CM-V,
guard (when a guard artifact is available) and oracle verdicts.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import combine_advantages

__all__ = [
    "ROLLOUT_TABLE",
    "RolloutTable",
    "build_rollout_table",
    "synthetic_rollout_table",
    "rollout_table_dir",
    "ensure_rollout_table",
    "DualSettings",
    "policy_expectations",
    "stationary_response",
    "response_curve",
    "equilibrium",
    "simulate_dual",
    "dynamics_summary",
    "training_trajectory",
    "plot_dual",
    "plot_response_curve",
    "DualDynamicsExplorer",
    "frontier_from_runs",
    "tradeoff_at",
    "load_budget_runs",
    "plot_tradeoff",
    "TradeoffExplorer",
    "LiveModels",
    "load_live_models",
    "question_choices",
    "live_sample",
    "verdict_rows",
    "LiveSampleExplorer",
]

ROLLOUT_TABLE = "rollout_table.json"


# =========================================================================== the rollout table


@dataclass
class RolloutTable:
    """``K`` scored answers for each of ``P`` prompts: the fast model of the policy's response.

    Attributes:
        reward, cost: ``[P, K]`` RM-V and CM-V end scores.
        helpful, harmless: ``[P, K]`` the oracle's ratings (0..3, -3..3; safe = harmless >= 0).
        harmful: ``[P]`` the prompt is a harmful request.
        category, question: ``[P]`` the prompt's harm category and question.
        responses: ``[P][K]`` the answers (for inspection).
        meta: how the table was made (policy, K, sampling settings, seconds).
    """

    reward: np.ndarray
    cost: np.ndarray
    helpful: np.ndarray
    harmless: np.ndarray
    harmful: np.ndarray
    category: list[str]
    question: list[str]
    responses: list[list[str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reward = np.asarray(self.reward, dtype=np.float64)
        self.cost = np.asarray(self.cost, dtype=np.float64)
        self.helpful = np.asarray(self.helpful, dtype=np.float64)
        self.harmless = np.asarray(self.harmless, dtype=np.float64)
        self.harmful = np.asarray(self.harmful, dtype=bool)
        shape = self.reward.shape
        if len(shape) != 2 or shape[1] < 1:
            raise ValueError(f"reward must be [P, K] with K >= 1, got shape {shape}")
        for name in ("cost", "helpful", "harmless"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, reward {shape}")
        if self.harmful.shape != (shape[0],) or len(self.category) != shape[0] or len(self.question) != shape[0]:
            raise ValueError("harmful, category and question need one entry per prompt")

    @property
    def n_prompts(self) -> int:
        return int(self.reward.shape[0])

    @property
    def k(self) -> int:
        return int(self.reward.shape[1])

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (scores rounded to 4 decimals)."""

        def r(a):
            return np.round(a, 4).tolist()

        return {
            "meta": self.meta,
            "reward": r(self.reward),
            "cost": r(self.cost),
            "helpful": self.helpful.astype(int).tolist(),
            "harmless": self.harmless.astype(int).tolist(),
            "harmful": self.harmful.tolist(),
            "category": list(self.category),
            "question": list(self.question),
            "responses": [list(x) for x in self.responses],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutTable:
        return cls(
            reward=data["reward"],
            cost=data["cost"],
            helpful=data["helpful"],
            harmless=data["harmless"],
            harmful=data["harmful"],
            category=list(data["category"]),
            question=list(data["question"]),
            responses=[list(x) for x in data.get("responses", [])],
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        from saferlhfv.io import write_json_atomic

        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RolloutTable:
        return cls.from_json(json.loads(Path(path).read_text()))

    def describe(self) -> dict[str, float]:
        """Headline numbers of the precursor as the table sees it (uniform weights)."""
        safe = self.harmless >= 0
        within = self.cost.std(axis=1).mean()
        return {
            "prompts": self.n_prompts,
            "answers_per_prompt": self.k,
            "harmful_prompts": int(self.harmful.sum()),
            "mean_reward": round(float(self.reward.mean()), 4),
            "mean_cost": round(float(self.cost.mean()), 4),
            "cost_min": round(float(self.cost.min()), 4),
            "cost_max": round(float(self.cost.max()), 4),
            "share_cost_positive": round(float((self.cost > 0).mean()), 4),
            "oracle_safety_rate": round(float(safe.mean()), 4),
            "oracle_harmful_safety_rate": round(float(safe[self.harmful].mean()), 4)
            if self.harmful.any()
            else math.nan,
            "cost_sign_agrees_with_oracle": round(float(((self.cost > 0) == ~safe).mean()), 4),
            "mean_within_prompt_cost_std": round(float(within), 4),
        }


def build_rollout_table(
    policy,
    processor,
    reward_model,
    cost_model,
    prompts,
    *,
    k: int = 8,
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
) -> RolloutTable:
    """Sample ``k`` answers per prompt from ``policy``, score them with RM-V / CM-V, judge them with the oracle.

    Args:
        prompts: a dataset (or list of dicts) with ``image``, ``question``, ``context``
            (``saferlhfv.data.world.rl_prompts``).
    """
    import time

    from saferlhfv.evaluate import judge_samples
    from saferlhfv.models.generation import generate_responses
    from saferlhfv.models.score import score_texts

    start = time.perf_counter()
    rows = [prompts[i] for i in range(len(prompts))]
    images = [r["image"] for r in rows for _ in range(k)]
    questions = [r["question"] for r in rows for _ in range(k)]
    contexts = [r["context"] for r in rows for _ in range(k)]
    responses: list[str] = []
    for s in range(0, len(questions), batch_size):
        responses += generate_responses(
            policy,
            processor,
            images[s : s + batch_size],
            questions[s : s + batch_size],
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            seed=seed * 1_000_003 + s,
        )
    rewards = score_texts(reward_model, processor, images, questions, responses, batch_size=batch_size)
    costs = score_texts(cost_model, processor, images, questions, responses, batch_size=batch_size)
    judged = judge_samples(contexts, responses)
    P = len(rows)

    def grid(values):
        return np.asarray(values, dtype=np.float64).reshape(P, k)

    return RolloutTable(
        reward=grid(rewards),
        cost=grid(costs),
        helpful=grid([j["helpful"] for j in judged]),
        harmless=grid([j["harmless"] for j in judged]),
        harmful=[judged[i * k]["harmful_prompt"] for i in range(P)],
        category=[judged[i * k]["category"] for i in range(P)],
        question=[r["question"] for r in rows],
        responses=[responses[i * k : (i + 1) * k] for i in range(P)],
        meta={
            "k": k,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )


def synthetic_rollout_table(n_prompts: int = 40, k: int = 8, *, seed: int = 0) -> RolloutTable:
    """A made-up table with the world's shape, for tests and for trying the explorer without models.

    Half the prompts are harmful: complying earns reward ~2 and cost ~+2; refusing earns ~0 and ~-1.
    On benign prompts complying earns ~2 and cost ~-1.5. About 60 % of the answers comply.
    """
    rng = np.random.default_rng(seed)
    harmful = np.arange(n_prompts) % 2 == 0
    comply = rng.random((n_prompts, k)) < 0.6
    noise = lambda: rng.normal(0, 0.4, (n_prompts, k))  # noqa: E731
    h = harmful[:, None]
    reward = np.where(comply, 2.0, 0.2) + noise()
    cost = np.where(h, np.where(comply, 2.0, -1.0), np.where(comply, -1.5, -0.5)) + noise()
    helpful = np.where(comply, 2, np.where(h, 1, 0))
    harmless = np.where(h, np.where(comply, -2, 2), np.where(comply, 2, 0))
    return RolloutTable(
        reward=reward,
        cost=cost,
        helpful=helpful,
        harmless=harmless,
        harmful=harmful,
        category=[f"category_{i % 4}" for i in range(n_prompts)],
        question=[f"question {i}" for i in range(n_prompts)],
        responses=[["comply" if c else "refuse" for c in row] for row in comply],
        meta={"synthetic": True, "seed": seed},
    )


def rollout_table_dir(cfg, *, k: int = 8, split: str = "evaluation", seed: int = 0) -> Path:
    """Cache folder of the rollout table of ``cfg``'s precursor, RM-V and CM-V (not created).

    Its name hashes every config section the table depends on (as the artifact cache does)
    plus ``k``, ``split``, ``seed`` and the rollout settings ``ppo.max_new_tokens`` / ``ppo.temperature``.
    """
    from saferlhfv import __version__
    from saferlhfv.paths import artifacts_dir

    upstream = cfg.fingerprint("seed", "model", "data", "sft", "reward", "cost")
    extra = json.dumps([upstream, k, split, seed, cfg.ppo.max_new_tokens, cfg.ppo.temperature])
    key = hashlib.sha256(extra.encode()).hexdigest()[:12]
    return artifacts_dir() / cfg.preset / f"rollouts-{key}-v{__version__}"


def ensure_rollout_table(
    cfg, *, k: int = 8, split: str = "evaluation", seed: int = 0, force: bool = False
) -> tuple[Path, RolloutTable]:
    """The cached rollout table of ``cfg`` (SFT, RM-V and CM-V trained first if they are missing).

    Returns:
        ``(path to rollout_table.json, table)``.
    """
    folder = rollout_table_dir(cfg, k=k, split=split, seed=seed)
    path = folder / ROLLOUT_TABLE
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file() and not force:
                return path, RolloutTable.load(path)
            from saferlhfv.data.world import rl_prompts
            from saferlhfv.train.preference import ensure_preference_model, load_scorer
            from saferlhfv.train.sft import ensure_sft, load_precursor

            sft_dir, _ = ensure_sft(cfg)
            reward_dir, _ = ensure_preference_model(cfg, "reward")
            cost_dir, _ = ensure_preference_model(cfg, "cost")
            with _quiet_loading():
                policy, processor = load_precursor(sft_dir)
                reward_model, _ = load_scorer(reward_dir)
                cost_model, _ = load_scorer(cost_dir)
            table = build_rollout_table(
                policy,
                processor,
                reward_model,
                cost_model,
                rl_prompts(cfg.data, split),
                k=k,
                max_new_tokens=cfg.ppo.max_new_tokens,
                temperature=cfg.ppo.temperature,
                seed=seed,
            )
            table.meta.update({"policy": "precursor (SFT)", "split": split, "preset": cfg.preset})
            folder.mkdir(parents=True, exist_ok=True)
            table.save(path)
            return path, table
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# =========================================================================== dual dynamics


@dataclass
class DualSettings:
    """Everything :func:`simulate_dual` needs besides the table (the explorer's sliders).

    The first six are :class:`~saferlhfv.config.PPOConfig`'s multiplier fields; ``tau`` (the KL
    temperature of the policy model), ``policy_lr`` (its step size) and ``sampled`` (feed the
    multiplier the costs of a sampled rollout batch, as in training, or the exact expectation)
    belong to the fast model.
    """

    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 20.0
    update_delay: int = 1
    cost_window: int = 128
    tau: float = 1.0
    policy_lr: float = 0.1
    batch_size: int = 16
    iterations: int = 200
    seed: int = 0
    sampled: bool = True

    @classmethod
    def from_ppo(cls, ppo, **overrides) -> DualSettings:
        """The multiplier settings of a :class:`~saferlhfv.config.PPOConfig` (``rollout_batch_size`` too)."""
        base = cls(
            threshold=ppo.threshold,
            lambda_init=ppo.lambda_init,
            lambda_lr=ppo.lambda_lr,
            lambda_max=ppo.lambda_max,
            update_delay=ppo.lambda_update_delay_steps,
            cost_window=ppo.cost_window,
            batch_size=ppo.rollout_batch_size,
        )
        return dataclasses.replace(base, **overrides)

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

    1. the policy ``w = softmax(l)`` answers a rollout batch of ``batch_size`` (prompt, answer)
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
    if s.tau <= 0 or s.policy_lr < 0 or s.batch_size < 1 or s.iterations < 1:
        raise ValueError("tau must be > 0, policy_lr >= 0, batch_size and iterations >= 1")
    lag = Lagrange(
        s.lambda_init,
        s.lambda_lr,
        s.lambda_max,
        threshold=s.threshold,
        update_delay_steps=s.update_delay,
        cost_window=s.cost_window,
    )
    rng = np.random.default_rng(s.seed)
    P, K = table.reward.shape
    logits = np.zeros((P, K))
    keys = ("lambda", "cost", "batch_cost", "window_cost", "reward", "safety", "harmful_safety", "benign_helpfulness")
    out: dict[str, list] = {key: [] for key in (*keys, "updated")}
    for _ in range(s.iterations):
        w = _softmax_rows(logits)
        exp = policy_expectations(table, w)
        if s.sampled:
            p = rng.integers(0, P, size=s.batch_size)
            u = rng.random(s.batch_size)[:, None]
            k = np.minimum((np.cumsum(w[p], axis=1) < u).sum(axis=1), K - 1)
            batch = table.cost[p, k]
        else:
            batch = np.full(s.batch_size, exp["cost"])
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
        from saferlhfv.plotting import read_metrics

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


#: lambda is drawn clipped to this range (without a cap it can overflow to e^700, or underflow to exactly 0).
_LAMBDA_SHOWN = (1e-4, 1e4)

_DUAL_PANELS = (
    ("lambda", "multiplier $\\lambda$"),
    ("cost", "expected cost $E[C]$ vs budget $d$"),
    ("reward", "expected reward $E[R]$"),
    ("harmful_safety", "oracle: safety on harmful prompts"),
)


def plot_dual(
    results: Mapping[str, Mapping[str, np.ndarray]],
    *,
    fig=None,
    equilibria: Mapping[str, float] | None = None,
    title: str | None = None,
):
    """Four panels over iterations: lambda, E[C] with the budget, E[R], oracle harmful-prompt safety.

    Args:
        results: ``{label: simulate_dual(...)}`` (or a trainer's metrics as the same keys).
        fig: draw into this figure (cleared) instead of a new one.
        equilibria: ``{label: lambda*}`` drawn as dotted lines on the lambda panel.

    Returns:
        The figure; ``fig.axes[i].lines`` hold the plotted data in ``results`` order (lambda clipped
        to 1e-4..1e4 for display).
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(13, 3.2))
    fig.clear()
    axes = fig.subplots(1, len(_DUAL_PANELS))
    colors = [f"C{i}" for i in range(10)]
    for i, (label, res) in enumerate(results.items()):
        c = colors[i % 10]
        for ax, (key, _) in zip(axes, _DUAL_PANELS):
            if key in res:
                y = np.clip(res[key], *_LAMBDA_SHOWN) if key == "lambda" else res[key]
                ax.plot(res["iteration"], y, color=c, lw=1.4, label=label)
        axes[1].plot(res["iteration"], res["threshold"], color=c, ls="--", lw=1)
        if equilibria and label in equilibria and math.isfinite(equilibria[label]):
            axes[0].axhline(equilibria[label], color=c, ls=":", lw=1)
    for ax, (_, name) in zip(axes, _DUAL_PANELS):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    shown = [np.clip(r["lambda"], *_LAMBDA_SHOWN) for r in results.values() if "lambda" in r]
    if shown:
        lo, hi = min(float(x.min()) for x in shown), max(float(x.max()) for x in shown)
        axes[0].set_ylim(lo / 1.5, hi * 1.5)
    axes[-1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_response_curve(curve: Mapping[str, np.ndarray], *, threshold: float | None = None, lam_star=None, fig=None):
    """The stationary policy's E[C], E[R] and oracle safety against a fixed lambda (log axis)."""
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(10, 3.2))
    fig.clear()
    axes = fig.subplots(1, 3)
    lam = curve["lambda"]
    axes[0].plot(lam, curve["cost"], color="C1")
    axes[1].plot(lam, curve["reward"], color="C0")
    axes[2].plot(lam, curve["harmful_safety"], color="C2", label="safety, harmful prompts")
    axes[2].plot(lam, curve["benign_helpfulness"] / 3, color="C4", label="helpfulness / 3, benign prompts")
    if threshold is not None:
        axes[0].axhline(threshold, ls="--", color="k", lw=1, label="budget d")
    if lam_star is not None and math.isfinite(lam_star) and lam_star > 0:
        for ax in axes:
            ax.axvline(lam_star, ls=":", color="k", lw=1)
    for ax, name in zip(axes, ("stationary $E_\\lambda[C]$", "stationary $E_\\lambda[R]$", "oracle")):
        ax.set_xscale("log")
        ax.set_xlabel("fixed $\\lambda$")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


# =========================================================================== widget plumbing


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return get_ipython() is not None


class _Explorer:
    """Shared shell: ``controls`` (name -> widget), a figure, an output area, ``result`` and ``error``."""

    def __init__(self) -> None:
        import ipywidgets as W

        self.controls: dict[str, Any] = {}
        self.result: Any = None
        self.error: str | None = None
        self.calls = 0
        self.status = W.HTML()
        self.output = W.Output()
        self.fig = None
        self._suspend = False

    def _watch(self) -> None:
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")

    def _on_change(self, _change=None) -> None:
        if not self._suspend:
            self.update()

    def set(self, **values) -> Any:
        """Set several controls at once (one recomputation); returns the new result."""
        self._suspend = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._suspend = False
        self.update()
        return self.result

    def update(self) -> None:
        self.calls += 1
        try:
            self._compute()
            self.error = None
            self.status.value = self._status_text()
        except ValueError as err:  # a slider combination the algorithm rejects: say why, keep the last plot
            self.error = str(err)
            self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
        self._render()

    def _render(self) -> None:
        if self.fig is None or not _in_ipython():
            return
        from IPython.display import clear_output, display

        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _status_text(self) -> str:
        return ""

    def _ui(self):
        raise NotImplementedError

    @property
    def ui(self):
        """The widget tree to display."""
        return self._ui()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)


class DualDynamicsExplorer(_Explorer):
    """Sliders for the multiplier's settings over :func:`simulate_dual`; ``result`` is its last output.

    Args:
        table: the rollout table (:func:`ensure_rollout_table`).
        settings: initial slider values (e.g. ``DualSettings.from_ppo(cfg.ppo)``); ``batch_size``,
            ``seed`` and ``sampled`` have no slider and keep these values.

    ``explorer.controls[name].value = x`` (or ``explorer.set(name=x)``) recomputes ``explorer.result``
    (:func:`simulate_dual`'s arrays), ``explorer.summary`` (:func:`dynamics_summary`) and
    ``explorer.lambda_star`` (:func:`equilibrium`), and redraws ``explorer.fig``: ``fig.axes[0]`` lambda,
    ``[1]`` E[C] (``lines[1]`` the budget), ``[2]`` E[R], ``[3]`` oracle safety on harmful prompts.
    """

    def __init__(self, table: RolloutTable, settings: DualSettings | None = None) -> None:
        import ipywidgets as W

        super().__init__()
        self.table = table
        s = settings or DualSettings()
        lo, hi = float(np.floor(table.cost.min())), float(np.ceil(table.cost.max()))
        style = {"description_width": "110px"}
        layout = W.Layout(width="340px")

        def fs(value, a, b, step, desc, fmt=".2f"):
            return W.FloatSlider(value=value, min=a, max=b, step=step, description=desc, style=style,
                                 layout=layout, readout_format=fmt, continuous_update=False)  # fmt: skip

        def ls(value, a, b, desc):
            return W.FloatLogSlider(value=value, base=10, min=a, max=b, step=0.05, description=desc, style=style,
                                    layout=layout, readout_format=".3g", continuous_update=False)  # fmt: skip

        def ints(value, a, b, desc):
            return W.IntSlider(value=value, min=a, max=b, description=desc, style=style, layout=layout,
                               continuous_update=False)  # fmt: skip

        self.controls = {
            "threshold": fs(float(np.clip(s.threshold, lo, hi)), lo, hi, 0.01, "budget d", ".3f"),
            "lambda_init": ls(s.lambda_init, -2, 2, "lambda_init"),
            "lambda_lr": ls(s.lambda_lr, -3, 0.5, "lambda_lr"),
            "lambda_max": fs(s.lambda_max if s.lambda_max is not None else 100.0, 0.1, 100.0, 0.1, "lambda_max"),
            "update_delay": ints(s.update_delay, 0, 50, "update delay"),
            "cost_window": ints(s.cost_window, 1, 1024, "cost window"),
            "tau": ls(s.tau, -1, 1, "tau (KL temp.)"),
            "policy_lr": ls(s.policy_lr, -2, 0.3, "policy step"),
            "iterations": ints(s.iterations, 10, 1000, "iterations"),
        }
        self.base = s
        self._watch()
        self.fig = None
        self.update()

    @property
    def settings(self) -> DualSettings:
        """The settings the sliders currently describe."""
        c = self.controls
        return self.base.replace(
            threshold=float(c["threshold"].value),
            lambda_init=float(c["lambda_init"].value),
            lambda_lr=float(c["lambda_lr"].value),
            lambda_max=float(c["lambda_max"].value),
            update_delay=int(c["update_delay"].value),
            cost_window=int(c["cost_window"].value),
            tau=float(c["tau"].value),
            policy_lr=float(c["policy_lr"].value),
            iterations=int(c["iterations"].value),
        )

    def _compute(self) -> None:
        s = self.settings
        result = simulate_dual(self.table, s)
        self.result = result
        self.summary = dynamics_summary(result)
        self.lambda_star = equilibrium(self.table, s.threshold, s.tau)["lambda"]
        self.fig = plot_dual({"simulated": result}, fig=self.fig, equilibria={"simulated": self.lambda_star})

    def _status_text(self) -> str:
        m = self.summary
        star = f"{self.lambda_star:.3g}" if math.isfinite(self.lambda_star) else "none (budget out of reach)"
        return (
            f"final lambda {m['final_lambda']:.3g} (stationary lambda* for this budget: {star}); "
            f"last half: lambda range {m['lambda_range']:.3g}, E[C] crosses d {m['cost_crossings']} times, "
            f"mean E[C] - d {m['mean_gap']:+.3f}"
        )

    def _ui(self):
        import ipywidgets as W

        c = list(self.controls.values())
        return W.VBox([W.HBox([W.VBox(c[0:3]), W.VBox(c[3:6]), W.VBox(c[6:9])]), self.status, self.output])


# =========================================================================== budget -> trade-off


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


def load_budget_runs(cfg, thresholds: Sequence[float], *, overrides: Mapping[str, Any] | None = None):
    """The budget sweep's runs (trained if missing, via ``budget_sweep``) and the precursor's reference point.

    Returns:
        ``(runs, precursor)``: ``precursor`` has ``safety_rate``, ``harmful_safety_rate``,
        ``benign_helpfulness`` and ``per_category_safety`` of the precursor's answers on the same
        evaluation prompts (from the first run's ``eval_samples.json``).
    """
    from saferlhfv.evaluate import summarize
    from saferlhfv.train.ppo_lag import budget_sweep

    runs = budget_sweep(cfg, list(thresholds), overrides=dict(overrides or {}))
    samples = json.loads((Path(runs[0]["folder"]) / "eval_samples.json").read_text())
    ref = summarize(samples["precursor"])
    precursor = {k: ref[k] for k in ("safety_rate", "harmful_safety_rate", "benign_helpfulness")}
    precursor["per_category_safety"] = ref["per_category_safety"]
    precursor["helpful_winrate"] = 0.5
    return runs, precursor


def _short(category: str) -> str:
    return category.replace("_and_", " & ").replace("_", " ")


def plot_tradeoff(
    frontier: Mapping[str, Any],
    point: Mapping[str, Any],
    *,
    precursor: Mapping[str, Any] | None = None,
    extra: Mapping[str, Mapping[str, float]] | None = None,
    fig=None,
):
    """Left: the frontier (helpful win rate vs safety rate) with the budget's point; right: per-category safety.

    Args:
        point: :func:`tradeoff_at`'s output.
        precursor: the precursor's numbers (a star on the left, grey bars on the right).
        extra: other policies to mark on the left, ``{label: {"helpful_winrate", "safety_rate"}}``.

    Returns:
        The figure; ``fig.axes[0].lines[1]`` is the point, ``fig.axes[1].patches`` the bars.
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(13, 4))
    fig.clear()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.8]})
    left.plot(frontier["helpful_winrate"], frontier["safety_rate"], "o-", color="C0", label="trained budgets")
    style = "o" if not point["interpolated"] else "D"
    left.plot([point["helpful_winrate"]], [point["safety_rate"]], style, ms=12, mfc="none", mec="C3", mew=2,
              label=f"d = {point['threshold']:.2f}" + (" (interpolated)" if point["interpolated"] else ""))  # fmt: skip
    for d, x, y in zip(frontier["threshold"], frontier["helpful_winrate"], frontier["safety_rate"]):
        left.annotate(f"d={d:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if precursor is not None:
        left.scatter([precursor.get("helpful_winrate", 0.5)], [precursor["safety_rate"]], marker="*", s=120,
                     color="k", label="precursor")  # fmt: skip
    for i, (label, m) in enumerate((extra or {}).items()):
        left.scatter([m["helpful_winrate"]], [m["safety_rate"]], marker="s", color=f"C{i + 4}", label=label)
    left.set_xlabel("helpfulness win rate vs precursor")
    left.set_ylabel("oracle safety rate")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    cats = list(point["per_category_safety"])
    x = np.arange(len(cats))
    width = 0.4 if precursor is not None else 0.8
    if precursor is not None:
        ref = [precursor["per_category_safety"].get(c, math.nan) for c in cats]
        right.bar(x - width / 2, ref, width, color="0.7", label="precursor")
    right.bar(x + (width / 2 if precursor is not None else 0), list(point["per_category_safety"].values()), width,
              color="C3", label=f"policy at d = {point['threshold']:.2f}")  # fmt: skip
    right.set_xticks(x, [_short(c) for c in cats], rotation=60, ha="right", fontsize=7)
    right.set_ylim(0, 1.05)
    right.set_ylabel("safety on harmful prompts")
    right.set_title(
        f"per category (harmful-prompt safety {point['harmful_safety_rate']:.2f}, "
        f"lambda at the end {point['final_lambda']:.2f})",
        fontsize=9,
    )
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


class TradeoffExplorer(_Explorer):
    """A budget slider moving a point along the frontier of trained budgets, per-category bars beside it.

    ``explorer.controls["threshold"].value = d`` recomputes ``explorer.result`` (:func:`tradeoff_at`).
    """

    def __init__(
        self,
        runs: Sequence[Mapping[str, Any]],
        *,
        precursor: Mapping[str, Any] | None = None,
        extra: Mapping[str, Mapping[str, float]] | None = None,
        threshold: float | None = None,
    ) -> None:
        import ipywidgets as W

        super().__init__()
        self.frontier = frontier_from_runs(runs)
        self.precursor, self.extra = precursor, extra
        d = self.frontier["threshold"]
        lo, hi = float(d.min()), float(d.max())
        step = max((hi - lo) / 100, 0.01)
        value = float(np.clip(d[len(d) // 2] if threshold is None else threshold, lo, hi))
        self.controls = {
            "threshold": W.FloatSlider(
                value=value,
                min=lo,
                max=max(hi, lo + step),
                step=step,
                description="budget d",
                continuous_update=False,
                layout=W.Layout(width="500px"),
            )  # fmt: skip
        }
        self._watch()
        self.update()

    def _compute(self) -> None:
        self.result = tradeoff_at(self.frontier, self.controls["threshold"].value)
        self.fig = plot_tradeoff(self.frontier, self.result, precursor=self.precursor, extra=self.extra, fig=self.fig)

    def _status_text(self) -> str:
        r = self.result
        where = (
            f"interpolated between the runs trained at d = {r['between'][0]:g} and {r['between'][1]:g}"
            if r["interpolated"]
            else "a trained run"
        )
        return (
            f"d = {r['threshold']:.2f} ({where}): safety rate {r['safety_rate']:.2f}, harmful-prompt safety "
            f"{r['harmful_safety_rate']:.2f}, helpful win rate {r['helpful_winrate']:.2f}, "
            f"mean cost {r['mean_cost']:.2f}"
        )

    def _ui(self):
        import ipywidgets as W

        return W.VBox([self.controls["threshold"], self.status, self.output])


# =========================================================================== live sample


@dataclass
class LiveModels:
    """What :func:`live_sample` runs: two policies, RM-V, CM-V, an optional guard and the oracle."""

    precursor: Any
    policy: Any
    processor: Any
    reward_model: Any
    cost_model: Any
    guard: Any = None
    #: why there is no guard, when there is none.
    guard_note: str = ""
    policy_name: str = "aligned (PPO-Lagrangian)"


@contextmanager
def _quiet_loading():
    """No "Loading weights" progress bars from transformers while several models load (restored after)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_live_models(cfg, *, use_guard: bool = True) -> LiveModels:
    """Load (training if missing) the precursor, the PPO-Lagrangian policy of ``cfg``, RM-V, CM-V and the guard.

    The guard comes from ``saferlhfv.train.guard.ensure_guard`` when that stage exists and
    ``use_guard`` is set; otherwise ``guard`` is None and ``guard_note`` says why.
    """
    from saferlhfv.models.factory import load_saved_vlm
    from saferlhfv.train.ppo_lag import ensure_ppo
    from saferlhfv.train.preference import ensure_preference_model, load_scorer
    from saferlhfv.train.sft import ensure_sft, load_precursor

    sft_dir, _ = ensure_sft(cfg)
    reward_dir, _ = ensure_preference_model(cfg, "reward")
    cost_dir, _ = ensure_preference_model(cfg, "cost")
    ppo_dir, _ = ensure_ppo(cfg)
    guard_dir, note = None, ""
    if use_guard:
        try:
            from saferlhfv.train.guard import ensure_guard, load_guard
        except ImportError as err:
            note = f"no guard stage in this version ({err})"
        else:
            guard_dir, _ = ensure_guard(cfg)
    else:
        note = "guard switched off (use_guard=False)"
    with _quiet_loading():
        precursor, processor = load_precursor(sft_dir)
        reward_model, _ = load_scorer(reward_dir)
        cost_model, _ = load_scorer(cost_dir)
        policy, _ = load_saved_vlm(ppo_dir / "model")
        guard = load_guard(guard_dir, cfg) if guard_dir is not None else None
    return LiveModels(precursor.eval(), policy.eval(), processor, reward_model.eval(), cost_model.eval(), guard, note)


def question_choices(context: str | Mapping[str, Any]) -> list[tuple[str, str]]:
    """Questions the mini world can judge about a prompt's picture, each with its oracle context (JSON).

    The prompt's own question first; then every coupled question that involves the picture's object
    (harmful or benign with it), the picture category's text question (harmful with any picture) and
    a captioning question. A context from another source yields only its own question.
    """
    from saferlhfv.data.content import CAPTION_QUESTIONS, CATEGORY_SPECS, QUESTIONS

    ctx = json.loads(context) if isinstance(context, str) else dict(context)
    own = json.dumps(ctx, sort_keys=True, separators=(",", ":"))
    out = [(str(ctx.get("question", "")), own)]
    obj, cat = ctx.get("object"), ctx.get("category")
    if obj is None or cat not in CATEGORY_SPECS:
        return out
    seen = {out[0][0]}

    def add(question: str, **fields) -> None:
        if question in seen:
            return
        seen.add(question)
        new = {**ctx, "question": question, **fields}
        out.append((question, json.dumps(new, sort_keys=True, separators=(",", ":"))))

    for q in QUESTIONS.values():
        if q.kind != "coupled":
            continue
        if obj in q.harmful:
            add(q.text, qid=q.qid, kind="coupled", category=q.category, harmful=True, severity=q.harmful[obj])
        elif obj in q.benign:
            add(q.text, qid=q.qid, kind="coupled", category=q.category, harmful=False, severity=0)
    text_q = next((q for q in CATEGORY_SPECS[cat].questions if q.kind == "text"), None)
    if text_q is not None:
        add(text_q.text, qid=text_q.qid, kind="text", category=cat, harmful=True, severity=text_q.severity)
    add(CAPTION_QUESTIONS[0], qid="caption/0", kind="caption", harmful=False, severity=0)
    return out


def live_sample(
    models: LiveModels,
    image,
    question: str,
    context: str | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    max_new_tokens: int = 40,
    do_sample: bool = True,
) -> dict[str, Any]:
    """Both policies answer (image, question); every judge reads both answers.

    Returns:
        ``{"question", "harmful_prompt", "precursor": {...}, "aligned": {...}}``; each answer has
        ``response``, ``reward`` (RM-V), ``cost`` (CM-V), ``guard`` (the guard's moderation dict, or
        None) and, when a ``context`` is given, ``oracle`` (``helpful``, ``harmless``, ``behaviour``, ``safe``).
    """
    from saferlhfv.data.oracle import analyse, parse_context
    from saferlhfv.models.generation import generate_responses
    from saferlhfv.models.score import score_texts

    image = image.convert("RGB")
    answers = {}
    for name, model in (("precursor", models.precursor), ("aligned", models.policy)):
        answers[name] = generate_responses(
            model, models.processor, [image], [question], max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed
        )[0]
    names = list(answers)
    texts = [answers[n] for n in names]
    imgs, qs = [image] * len(texts), [question] * len(texts)
    rewards = score_texts(models.reward_model, models.processor, imgs, qs, texts)
    costs = score_texts(models.cost_model, models.processor, imgs, qs, texts)
    guard = models.guard.moderate(imgs, qs, texts) if models.guard is not None else [None] * len(texts)
    ctx = parse_context(context) if context is not None else None
    out: dict[str, Any] = {"question": question, "harmful_prompt": None if ctx is None else bool(ctx.harmful)}
    for i, name in enumerate(names):
        entry = {"response": texts[i], "reward": round(rewards[i], 4), "cost": round(costs[i], 4), "guard": guard[i]}
        if ctx is not None:
            j = analyse(ctx, texts[i])
            entry["oracle"] = {
                "helpful": j.helpful,
                "harmless": j.harmless,
                "behaviour": j.behaviour,
                "safe": j.is_safe,
            }
        out[name] = entry
    return out


def verdict_rows(sample: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`live_sample`'s output as one flat row per policy (for a table)."""
    rows = []
    for name in ("precursor", "aligned"):
        e = sample[name]
        g, o = e.get("guard"), e.get("oracle")
        rows.append(
            {
                "policy": name,
                "response": e["response"],
                "RM-V reward": e["reward"],
                "CM-V cost": e["cost"],
                "CM-V says": "harmful" if e["cost"] > 0 else "safe",
                "guard": "n/a"
                if g is None
                else (
                    f"{'BLOCK' if g['flagged'] else 'pass'} (p={g['p_unsafe']:.2f}, {g['severity']}, {g['category']})"
                ),  # fmt: skip
                "oracle helpful": None if o is None else o["helpful"],
                "oracle harmless": None if o is None else o["harmless"],
                "oracle behaviour": None if o is None else o["behaviour"],
            }
        )
    return rows


def _rows_html(rows: list[dict[str, Any]], note: str = "") -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 6px'>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 6px'>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    extra = f"<div style='color:#666'>{html.escape(note)}</div>" if note else ""
    return f"<table>{'<tr>' + head + '</tr>'}{body}</table>{extra}"


def _png(image, size: int = 160) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


class LiveSampleExplorer(_Explorer):
    """Pick a picture (an evaluation prompt) and a question; see both policies' answers and every verdict.

    ``controls``: ``image`` (prompt index), ``question`` (index into :func:`question_choices`),
    ``seed``. ``result`` is :func:`live_sample`'s output, ``rows`` its :func:`verdict_rows`.
    """

    def __init__(self, models: LiveModels, prompts, *, index: int = 0, max_new_tokens: int = 40) -> None:
        import ipywidgets as W

        super().__init__()
        self.models, self.prompts, self.max_new_tokens = models, prompts, max_new_tokens
        labels = []
        for i in range(len(prompts)):
            ctx = json.loads(prompts[i]["context"])
            kind = "harmful" if ctx.get("harmful") else "benign"
            labels.append((f"{i}: {ctx.get('object', '?')} · {_short(ctx.get('category', '?'))} · {kind}", i))
        self.controls = {
            "image": W.Dropdown(options=labels, value=index, description="picture", layout=W.Layout(width="480px")),
            "question": W.Dropdown(options=[], description="question", layout=W.Layout(width="640px")),
            "seed": W.IntSlider(value=0, min=0, max=50, description="seed", continuous_update=False),
        }
        self.picture = W.Image(format="png", width=160, height=160)
        self.table = W.HTML()
        self._set_questions()
        self.controls["image"].observe(self._on_image, names="value")
        for name in ("question", "seed"):
            self.controls[name].observe(self._on_change, names="value")
        self.update()

    def _set_questions(self) -> None:
        row = self.prompts[int(self.controls["image"].value)]
        self.choices = question_choices(row["context"])
        self._suspend = True
        try:
            self.controls["question"].options = [(q, i) for i, (q, _) in enumerate(self.choices)]
            self.controls["question"].value = 0
        finally:
            self._suspend = False

    def _on_image(self, _change=None) -> None:
        self._set_questions()
        self.update()

    def _compute(self) -> None:
        row = self.prompts[int(self.controls["image"].value)]
        question, context = self.choices[int(self.controls["question"].value)]
        self.result = live_sample(
            self.models,
            row["image"],
            question,
            context,
            seed=int(self.controls["seed"].value),
            max_new_tokens=self.max_new_tokens,
        )
        self.rows = verdict_rows(self.result)
        self.picture.value = _png(row["image"])
        note = "" if self.models.guard is not None else f"guard: {self.models.guard_note or 'not loaded'}"
        self.table.value = _rows_html(self.rows, note)

    def _status_text(self) -> str:
        h = self.result["harmful_prompt"]
        return "" if h is None else f"the oracle reads this request as <b>{'harmful' if h else 'benign'}</b>"

    def _ui(self):
        import ipywidgets as W

        c = self.controls
        return W.VBox([W.HBox([self.picture, W.VBox([c["image"], c["question"], c["seed"], self.status])]), self.table])
