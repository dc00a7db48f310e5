"""Diagnostics of the cached tiny run: ``python -m saferlhfv.diagnostics --preset tiny``.

Trains what is missing (through :func:`saferlhfv.stages.ensure`) and prints JSON: the precursor's
grounding accuracy and harm probe (:func:`saferlhfv.evaluate.harm_probe`), CM-V's agreement with
the oracle on the precursor's and on the PPO policy's evaluation answers, and the safety and win
rates of the scripted yardstick policies (:func:`saferlhfv.evaluate.scripted_policy_samples`) with
the mean RM-V reward and CM-V cost of their answers on harmful and on benign prompts: what the
score models make of the ideal corner (is it the Lagrangian's optimum, and for which lambda?).
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
from saferlhfv.train.preference import load_scorer
from saferlhfv.train.sft import load_precursor

__all__ = ["main", "scorer_view"]


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
    samples = json.loads((ppo_dir / "eval_samples.json").read_text())
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
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
