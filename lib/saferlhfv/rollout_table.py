"""The rollout table: ``K`` answers sampled from the precursor for each evaluation prompt, scored
by RM-V and CM-V and judged by the oracle, as arrays.

It is the fast model of the policy that the dual-dynamics explorer (:mod:`saferlhfv.dual`,
notebook 06) reweights instead of training. :func:`ensure_rollout_table` builds it once per
config into the artifact cache (:func:`saferlhfv.artifacts.cached`, name ``rollouts``);
:func:`synthetic_rollout_table` gives a hand-made one for tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ROLLOUT_TABLE",
    "RolloutTable",
    "build_rollout_table",
    "synthetic_rollout_table",
    "ensure_rollout_table",
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
    from saferlhfv.models.generation import generate_answers
    from saferlhfv.models.score import score_texts

    start = time.perf_counter()
    rows = [prompts[i] for i in range(len(prompts))]
    images = [r["image"] for r in rows for _ in range(k)]
    questions = [r["question"] for r in rows for _ in range(k)]
    contexts = [r["context"] for r in rows for _ in range(k)]
    responses = generate_answers(policy, processor, images, questions, batch_size=batch_size, seed=seed * 1_000_003,
                                 max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)  # fmt: skip
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


def _rollout_table_key(cfg, *, k: int, split: str, seed: int) -> str:
    """Cache key of a rollout table: every config section of RM-V and CM-V (and so of SFT) plus
    ``k``, ``split``, ``seed`` and the rollout settings ``ppo.max_new_tokens`` / ``ppo.temperature``."""
    from saferlhfv.stages import config_sections

    sections = dict.fromkeys(config_sections("reward") + config_sections("cost"))
    extra = json.dumps([cfg.fingerprint(*sections), k, split, seed, cfg.ppo.max_new_tokens, cfg.ppo.temperature])
    return hashlib.sha256(extra.encode()).hexdigest()[:12]


def ensure_rollout_table(
    cfg, *, k: int = 8, split: str = "evaluation", seed: int = 0, force: bool = False
) -> tuple[Path, RolloutTable]:
    """The cached rollout table of ``cfg`` (SFT, RM-V and CM-V trained first if they are missing).

    The table is a product of the artifact cache (:func:`saferlhfv.artifacts.cached`, name
    ``rollouts``), keyed by :func:`_rollout_table_key`.

    Returns:
        ``(path to rollout_table.json, table)``.
    """
    from saferlhfv.artifacts import cached

    def build(folder: Path) -> dict[str, Any]:
        from saferlhfv.data.world import rl_prompts
        from saferlhfv.models.factory import quiet_loading
        from saferlhfv.stages import ensure
        from saferlhfv.train.preference import load_scorer
        from saferlhfv.train.sft import load_precursor

        with quiet_loading():
            policy, processor = load_precursor(ensure("sft", cfg)[0])
            reward_model, _ = load_scorer(ensure("reward", cfg)[0])
            cost_model, _ = load_scorer(ensure("cost", cfg)[0])
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
        table.save(folder / ROLLOUT_TABLE)
        return {"prompts": int(table.reward.shape[0]), "k": k, "split": split, "seed": seed}

    folder, _ = cached(cfg, "rollouts", _rollout_table_key(cfg, k=k, split=split, seed=seed), build, force=force)
    path = folder / ROLLOUT_TABLE
    return path, RolloutTable.load(path)
