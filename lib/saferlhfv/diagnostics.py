"""Diagnostics of the cached tiny run: ``python -m saferlhfv.diagnostics --preset tiny``.

Trains what is missing (through :func:`saferlhfv.stages.ensure`) and prints JSON: the precursor's
grounding accuracy and harm probe (:func:`saferlhfv.evaluate.harm_probe`), CM-V's agreement with
the oracle on the precursor's and on the PPO policy's evaluation answers, and the safety and win
rates of the scripted yardstick policies (:func:`saferlhfv.evaluate.scripted_policy_samples`) with
the mean RM-V reward and CM-V cost of their answers on harmful and on benign prompts: what the
score models make of the ideal corner (is it the Lagrangian's optimum, and for which lambda?), and
the budget ``d`` on CM-V's scale that a harmful-prompt safety asks for (``budget``).
Kept apart from :mod:`saferlhfv.evaluate`, which the trainers import: this module sits above the
stages it reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from saferlhfv.config import add_config_arguments, config_from_args
from saferlhfv.data.world import rl_prompts
from saferlhfv.evaluate import (
    SCRIPTED_POLICIES,
    cost_model_agreement,
    grounding_accuracy,
    harm_probe,
    score_samples,
    scripted_policy_samples,
    summarize,
    win_rates,
)
from saferlhfv.stages import ensure
from saferlhfv.train.ppo_lag import load_eval_samples
from saferlhfv.train.preference import load_scorer
from saferlhfv.train.sft import load_precursor

__all__ = ["main", "scorer_view", "budget_for_harmful_safety", "harmful_safety_at_budget", "budget_report"]


def scorer_view(rewards: list[float], costs: list[float], samples: list[dict[str, Any]]) -> dict[str, float]:
    """Mean RM-V reward and CM-V cost of judged answers, on harmful and on benign prompts and overall.

    Args:
        rewards, costs: one score per sample (:func:`~saferlhfv.evaluate.score_samples`).
        samples: judged answers with ``harmful_prompt``.

    Returns:
        ``reward_harmful``, ``reward_benign``, ``cost_harmful``, ``cost_benign``, ``mean_cost``.
    """
    out: dict[str, float] = {}
    for group, harmful in (("harmful", True), ("benign", False)):
        picked = [i for i, s in enumerate(samples) if s["harmful_prompt"] == harmful]
        for name, values in (("reward", rewards), ("cost", costs)):
            out[f"{name}_{group}"] = round(sum(values[i] for i in picked) / len(picked), 4) if picked else float("nan")
    out["mean_cost"] = round(sum(costs) / len(costs), 4) if costs else float("nan")
    return out


def budget_for_harmful_safety(ideal: dict[str, float], comply_all: dict[str, float], *, harmful_share: float,
                              harmful_safety: float) -> float:  # fmt: skip
    """The expected CM-V cost ``J_C`` of the policy that misses the ideal only on harmful prompts.

    That policy refuses a share ``s`` of harmful prompts as the scripted ideal does, complies with the
    rest as the comply-all yardstick does, and answers benign prompts as the ideal::

        J_C(s) = h * (s * C_ideal,harmful + (1 - s) * C_comply,harmful) + (1 - h) * C_ideal,benign

    Under an expected-cost constraint ``J_C <= d`` the Lagrangian stops pushing once the budget is met,
    so ``d = J_C(s)`` is the loosest budget that still asks for harmful-prompt safety ``s`` (benign
    answers cost as little as refusals under CM-V, so they cannot be traded for safety). Costs are in
    CM-V's units; ``h`` is the share of harmful prompts.

    Args:
        ideal, comply_all: :func:`scorer_view` of the two yardsticks (``cost_harmful``, ``cost_benign``).
        harmful_share: ``h`` in [0, 1].
        harmful_safety: ``s`` in [0, 1].
    """
    harmful = harmful_safety * ideal["cost_harmful"] + (1 - harmful_safety) * comply_all["cost_harmful"]
    return harmful_share * harmful + (1 - harmful_share) * ideal["cost_benign"]


def harmful_safety_at_budget(ideal: dict[str, float], comply_all: dict[str, float], *, harmful_share: float,
                             budget: float) -> float:  # fmt: skip
    """The inverse of :func:`budget_for_harmful_safety`: the harmful-prompt safety ``s`` a budget ``d``
    asks for (clipped to [0, 1]; 1 when even the ideal does not meet ``d``)."""
    benign = (1 - harmful_share) * ideal["cost_benign"]
    spread = comply_all["cost_harmful"] - ideal["cost_harmful"]
    s = (comply_all["cost_harmful"] - (budget - benign) / harmful_share) / spread
    return min(1.0, max(0.0, s))


def budget_report(ideal: dict[str, float], comply_all: dict[str, float], precursor: list[dict[str, Any]], *,
                  threshold: float) -> dict[str, float]:  # fmt: skip
    """What the budget ``threshold`` asks for, and the budget each harmful-prompt safety needs.

    Args:
        ideal, comply_all: :func:`scorer_view` of the two yardsticks (only their costs are read).
        precursor: judged answers (``harmful_prompt``) of the evaluation prompts, for the harmful share.
    """
    h = sum(s["harmful_prompt"] for s in precursor) / len(precursor)
    yardsticks = {"ideal": ideal, "comply_all": comply_all, "harmful_share": h}
    return {
        "threshold": threshold,
        "harmful_share": round(h, 4),
        "harmful_safety_it_asks_for": round(harmful_safety_at_budget(**yardsticks, budget=threshold), 4),
        **{f"for_harmful_safety_{s}": round(budget_for_harmful_safety(**yardsticks, harmful_safety=s), 4)
           for s in (0.8, 0.9, 0.92, 0.95)},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Print the diagnostics as JSON; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.diagnostics", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv))
    sft_dir, _ = ensure("sft", cfg)
    policy, processor = load_precursor(sft_dir)
    out: dict[str, Any] = {
        "precursor_grounding_accuracy": grounding_accuracy(policy, processor, cfg.data),
        "precursor_harm_probe": harm_probe(policy, processor, cfg.data),
    }
    ppo_dir, _ = ensure("ppo", cfg)
    samples = load_eval_samples(ppo_dir)
    cost_model, _ = load_scorer(ensure("cost", cfg)[0])
    reward_model, _ = load_scorer(ensure("reward", cfg)[0])
    prompts = rl_prompts(cfg.data, "evaluation")
    for who in ("precursor", "policy"):
        costs = score_samples(cost_model, processor, prompts, samples[who])
        out[f"cost_model_vs_oracle_{who}"] = cost_model_agreement(costs, samples[who])
    for name in SCRIPTED_POLICIES:  # yardsticks, against the same precursor answers as the PPO run's win rates
        scripted = scripted_policy_samples(prompts, name, seed=cfg.seed)
        summary = summarize(scripted)
        out[f"scripted_{name}"] = {
            "safety_rate": summary["safety_rate"],
            "benign_helpfulness": summary["benign_helpfulness"],
            **win_rates(scripted, samples["precursor"]),
            **scorer_view(
                score_samples(reward_model, processor, prompts, scripted),
                score_samples(cost_model, processor, prompts, scripted),
                scripted,
            ),
        }
    out["budget"] = budget_report(out["scripted_ideal"], out["scripted_comply_all"], samples["precursor"],
                                  threshold=cfg.ppo.threshold)  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
