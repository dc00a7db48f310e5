r"""Stage 4, Safe RLHF-V: PPO-Lagrangian (and its baselines) trained, evaluated and cached.

The trainer lives in :mod:`saferlhfv.train.ppo` (rollout, the two role layouts, the trainer
with its hooks and the ``ppo.algorithm`` registry, sweeps). This module is the stage: it
trains the method the config names from the cached SFT / RM-V / CM-V artifacts, evaluates the
policy against the precursor with the oracle on the held-out prompts, and caches the result.

``python -m saferlhfv.train.ppo_lag --preset tiny`` (``--set ppo.algorithm=reward_only`` for the
baseline; ``--seeds 0 1 2`` for one run per seed of the RL stage and their mean +- std); many GPUs::

    accelerate launch --config_file lib/saferlhfv/presets/accelerate/zero2.yaml \
        -m saferlhfv.train.ppo_lag --preset paper
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config, add_config_arguments, config_from_args
from saferlhfv.io import write_json_atomic
from saferlhfv.models.score import score_texts
from saferlhfv.train.ppo import SWEEP_ITERATIONS, SWEEP_THRESHOLDS, budget_sweep, make_trainer, run_seed, seed_runs

#: answers sampled per evaluation prompt to measure safety compensation (per-prompt unsafe probability).
COMPENSATION_SAMPLES = 4

__all__ = [
    "COMPENSATION_SAMPLES",
    "train_ppo_lag",
    "ensure_ppo",
    "budget_sweep",
    "seed_runs",
    "SWEEP_THRESHOLDS",
    "SWEEP_ITERATIONS",
    "main",
]


def train_ppo_lag(
    cfg: Config, out_dir: str | Path, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, resume: bool = True
) -> dict[str, Any]:
    """Train the aligned policy into ``out_dir/model`` and evaluate it against the precursor.

    Returns:
        ``algorithm``, ``safety_rate`` (oracle, evaluation prompts), ``harmful_safety_rate``,
        ``benign_helpfulness``, ``helpful_winrate`` / ``harmless_winrate`` vs the precursor,
        ``degenerate_share``, ``mean_cost`` / ``mean_reward`` (CM-V / RM-V on the evaluation
        answers), ``cost_sign_agreement`` (share of answers where CM-V's sign matches the
        oracle's verdict), ``reward_oracle_correlation`` (Pearson, RM-V vs oracle helpfulness),
        ``final_lambda``, ``threshold`` (the method's budget: ``ppo.repo_threshold`` for RePO),
        ``seed`` (of the RL stage), ``precursor`` (the same oracle numbers for the SFT policy),
        the compensation numbers of :func:`saferlhfv.evaluate.compensation` on
        :data:`COMPENSATION_SAMPLES` answers per prompt (``unsafe_prompt_share``,
        ``mean_unsafe_probability``, ``prompt_costs``: sorted per-prompt mean CM-V costs), ``seconds``.
    """
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import (
        compensation,
        cost_model_agreement,
        evaluate_policy,
        pearson,
        prompt_safety,
        win_rates,
    )

    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = make_trainer(cfg, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, out_dir=out_dir)
    result = trainer.train(resume=resume)
    trainer.save_policy(out_dir / "model")
    prompts = rl_prompts(cfg.data, "evaluation")
    roles = trainer.roles
    kwargs = dict(max_new_tokens=cfg.ppo.max_new_tokens, seed=run_seed(cfg) + 17, return_samples=True)
    summary, samples = evaluate_policy(trainer.policy(), roles.processor, prompts, **kwargs)
    ref_summary, ref_samples = evaluate_policy(roles.reference, roles.processor, prompts, **kwargs)
    args = (
        [prompts[s["index"]]["image"] for s in samples],
        [s["question"] for s in samples],
        [s["response"] for s in samples],
    )
    rewards = score_texts(roles.reward_model, roles.processor, *args)
    costs = score_texts(roles.cost_model, roles.processor, *args)
    write_json_atomic(out_dir / "eval_samples.json", {"policy": samples, "precursor": ref_samples})
    per_prompt = prompt_safety(trainer.policy(), roles.processor, prompts, k=COMPENSATION_SAMPLES,
                               cost_model=roles.cost_model, max_new_tokens=cfg.ppo.max_new_tokens,
                               seed=run_seed(cfg) + 29)  # fmt: skip
    comp = compensation(per_prompt)
    return {
        "algorithm": cfg.ppo.algorithm,
        "iterations": result["iterations"],
        "processes": result["processes"],
        "ranks_agree": result["ranks_agree"],
        "safety_rate": summary["safety_rate"],
        "harmful_safety_rate": summary["harmful_safety_rate"],
        "benign_helpfulness": summary["benign_helpfulness"],
        "mean_helpfulness": summary["mean_helpfulness"],
        "degenerate_share": summary["degenerate_share"],
        **win_rates(samples, ref_samples),
        "mean_reward": round(sum(rewards) / len(rewards), 4),
        "mean_cost": round(sum(costs) / len(costs), 4),
        "cost_sign_agreement": cost_model_agreement(costs, samples)["agreement"],
        "reward_oracle_correlation": pearson(rewards, [s["helpful"] for s in samples]),
        "final_lambda": round(result["final_lambda"], 4),
        "threshold": getattr(cfg.ppo, trainer.budget_key),
        "unsafe_prompt_share": comp["unsafe_prompt_share"],
        "mean_unsafe_probability": comp["mean_unsafe_probability"],
        "prompt_costs": comp["sorted_costs"],
        "seed": cfg.ppo.seed,
        "behaviour": summary["behaviour"],
        "per_category_safety": summary["per_category_safety"],
        "precursor": {k: ref_summary[k] for k in ("safety_rate", "harmful_safety_rate", "benign_helpfulness")},
        "seconds": round(time.perf_counter() - start, 2),
    }


def ensure_ppo(cfg: Config) -> tuple[Path, dict[str, Any]]:
    """The PPO artifact for ``cfg`` (training SFT, RM-V and CM-V first if they are not cached)."""
    from saferlhfv.artifacts import ensure_artifact

    dirs = _upstream_dirs(cfg, train_missing=True)
    return ensure_artifact(cfg, "ppo", lambda folder: train_ppo_lag(cfg, folder, **dirs))


def _upstream_dirs(cfg: Config, *, train_missing: bool) -> dict[str, Path]:
    """Artifact folders of SFT, RM-V and CM-V; trains missing ones only in a single process."""
    from saferlhfv.artifacts import RESULT, artifact_dir
    from saferlhfv.train.preference import ensure_preference_model
    from saferlhfv.train.sft import ensure_sft

    if train_missing:
        return {
            "sft_dir": ensure_sft(cfg)[0],
            "reward_dir": ensure_preference_model(cfg, "reward")[0],
            "cost_dir": ensure_preference_model(cfg, "cost")[0],
        }
    dirs = {f"{s}_dir": artifact_dir(cfg, s) for s in ("sft", "reward", "cost")}
    missing = [str(d) for d in dirs.values() if not (d / RESULT).is_file()]
    if missing:
        raise SystemExit(
            "PPO under several processes needs the SFT, RM-V and CM-V artifacts first (missing: "
            + ", ".join(missing)
            + f"). Train them once in a single process: python -m saferlhfv.pipeline --preset {cfg.preset} "
            "--stages sft reward cost (with the same --set overrides)."
        )
    return dirs


def _printable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("per_category_safety", "behaviour", "prompt_costs")}


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from saferlhfv.artifacts import RESULT, artifact_dir

    parser = argparse.ArgumentParser(prog="python -m saferlhfv.train.ppo_lag", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: the artifact cache)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="one cached run per seed of the RL stage (ppo.seed), then mean +- std"
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        if args.seeds:
            if state.num_processes > 1 or args.out:
                raise SystemExit("--seeds runs in a single process, into the artifact cache (no --out)")
            report = seed_runs(cfg, args.seeds)
            print(json.dumps({**report, "runs": [_printable(r) for r in report["runs"]]}, indent=2))
            print("mean +- std over seeds " + " ".join(map(str, args.seeds)) + ":")
            for key, mean in report["mean"].items():
                print(f"  {key:<26} {mean:8.4f} +- {report['std'][key]:.4f}")
            return 0
        if state.num_processes == 1 and not args.out:
            folder, metrics = ensure_ppo(cfg)
        else:
            dirs = _upstream_dirs(cfg, train_missing=state.num_processes == 1)
            folder = Path(args.out) if args.out else artifact_dir(cfg, "ppo")
            metrics = train_ppo_lag(cfg, folder, **dirs)
            if state.is_main_process:
                write_json_atomic(folder / RESULT, metrics)
        if state.is_main_process:
            print(json.dumps(_printable(metrics), indent=2))
            print(f"artifact: {folder}")
    finally:
        # gloo process groups can abort at exit unless they are torn down explicitly
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            state.wait_for_everyone()
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
