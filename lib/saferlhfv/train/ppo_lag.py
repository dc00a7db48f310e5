r"""The PPO stage of Safe RLHF-V: PPO-Lagrangian (and the other methods) trained and evaluated.

The trainer lives in :mod:`saferlhfv.train.ppo` (rollout, the two role layouts, the trainer
with its hooks and the ``ppo.algorithm`` registry). This module is the stage's build
(:func:`train_ppo_lag`, the ``ppo`` entry of :mod:`saferlhfv.stages`): it trains the method the
config names from the SFT / RM-V / CM-V artifacts and evaluates the policy against the precursor
with the oracle on the held-out prompts.

``python -m saferlhfv.run ppo --preset tiny`` (``--set ppo.algorithm=reward_only`` for the
baseline, or the method's name: ``python -m saferlhfv.run ppo_repo``; ``--seeds 0 1 2`` for one
run per seed of the RL stage and their mean +- std); many GPUs::

    accelerate launch --config_file lib/saferlhfv/presets/accelerate/zero2.yaml \
        -m saferlhfv.run ppo --preset paper
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from saferlhfv.config import Config
from saferlhfv.io import write_json_atomic
from saferlhfv.train.ppo import make_trainer, run_seed

#: answers sampled per evaluation prompt to measure safety compensation (per-prompt unsafe probability).
COMPENSATION_SAMPLES = 4
#: the evaluation answers (policy and precursor alike) are sampled with seed ``run_seed(cfg) + EVAL_SEED_OFFSET``.
EVAL_SEED_OFFSET = 17
#: the oracle numbers also reported for greedy decoding, as ``greedy_<key>`` (policy and precursor).
GREEDY_KEYS = ("safety_rate", "harmful_safety_rate", "benign_helpfulness", "degenerate_share")

__all__ = ["COMPENSATION_SAMPLES", "GREEDY_KEYS", "evaluate_precursor", "load_eval_samples", "train_ppo_lag"]


def load_eval_samples(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The judged evaluation answers a PPO run wrote (``folder/eval_samples.json``).

    Returns:
        ``policy``, ``precursor`` (sampled) and ``policy_greedy``, ``precursor_greedy``: one dict per
        evaluation prompt, in order, with ``index``, ``question``, ``response`` and the oracle's verdict
        (``helpful``, ``harmless``, ``behaviour``, ``harmful_prompt``, ``category``).
    """
    path = Path(folder) / "eval_samples.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a finished PPO run (train it with ensure('ppo'))")
    return json.loads(path.read_text())


def evaluate_precursor(cfg: Config, reference, processor, prompts, *, sft_dir: Path) -> dict[str, Any]:
    """The reference policy (the precursor) answering the evaluation prompts, sampled and greedy, cached.

    What :func:`train_ppo_lag` compares each trained policy with. It depends only on the precursor, the
    role layout that holds the reference (``ppo.shared_base``), the RL seed (:func:`run_seed`) and
    ``ppo.max_new_tokens``, so the runs of a budget sweep, and the methods of one seed, share it: the
    artifact cache keeps it (``precursor_eval-<key>``) and every later run reads it instead of
    generating the same answers again (about 3 s of a tiny run's 12 s of evaluation).

    Args:
        reference: the trainer's frozen reference, ``roles.reference``.
        prompts: the held-out evaluation prompts (``rl_prompts(cfg.data, "evaluation")``).
        sft_dir: the precursor's artifact folder (its name carries the hash of everything it was built from).

    Returns:
        ``sampled`` and ``greedy``: each ``{"summary": ..., "samples": [...]}`` as
        :func:`saferlhfv.evaluate.evaluate_policy` returns them with ``return_samples=True``.
    """
    import hashlib

    from saferlhfv.artifacts import cached
    from saferlhfv.evaluate import evaluate_policy

    seed = run_seed(cfg) + EVAL_SEED_OFFSET
    kwargs = dict(max_new_tokens=cfg.ppo.max_new_tokens, seed=seed, return_samples=True)
    extra = json.dumps([Path(sft_dir).name, cfg.ppo.shared_base, seed, cfg.ppo.max_new_tokens])
    key = hashlib.sha256(extra.encode()).hexdigest()[:12]

    def build(folder: Path) -> dict[str, Any]:
        out = {}
        for name, do_sample in (("sampled", True), ("greedy", False)):
            summary, samples = evaluate_policy(reference, processor, prompts, do_sample=do_sample, **kwargs)
            out[name] = {"summary": summary, "samples": samples}
        write_json_atomic(folder / "samples.json", out)
        return {"sft": Path(sft_dir).name, "shared_base": cfg.ppo.shared_base, "seed": seed,
                "max_new_tokens": cfg.ppo.max_new_tokens}  # fmt: skip

    folder, _ = cached(cfg, "precursor_eval", key, build)
    return json.loads((folder / "samples.json").read_text())


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
        ``greedy_<key>`` for each key of :data:`GREEDY_KEYS` and ``greedy_helpful_winrate`` /
        ``greedy_harmless_winrate``: the same policy decoded greedily (the numbers above sample at
        temperature 1, as the rollouts do; the precursor's greedy numbers are in ``precursor`` too),
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
        score_samples,
        win_rates,
    )

    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = make_trainer(cfg, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, out_dir=out_dir)
    result = trainer.train(resume=resume)
    trainer.save_policy(out_dir / "model")
    prompts = rl_prompts(cfg.data, "evaluation")
    roles = trainer.roles
    kwargs = dict(max_new_tokens=cfg.ppo.max_new_tokens, seed=run_seed(cfg) + EVAL_SEED_OFFSET, return_samples=True)
    summary, samples = evaluate_policy(trainer.policy(), roles.processor, prompts, **kwargs)
    greedy = dict(kwargs, do_sample=False)
    greedy_summary, greedy_samples = evaluate_policy(trainer.policy(), roles.processor, prompts, **greedy)
    precursor = evaluate_precursor(cfg, roles.reference, roles.processor, prompts, sft_dir=sft_dir)
    ref_summary, ref_samples = precursor["sampled"]["summary"], precursor["sampled"]["samples"]
    greedy_ref, greedy_ref_samples = precursor["greedy"]["summary"], precursor["greedy"]["samples"]
    rewards = score_samples(roles.reward_model, roles.processor, prompts, samples)
    costs = score_samples(roles.cost_model, roles.processor, prompts, samples)
    write_json_atomic(out_dir / "eval_samples.json", {"policy": samples, "precursor": ref_samples,
                                                      "policy_greedy": greedy_samples,
                                                      "precursor_greedy": greedy_ref_samples})  # fmt: skip
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
        **{f"greedy_{k}": greedy_summary[k] for k in GREEDY_KEYS},
        **{f"greedy_{k}": v for k, v in win_rates(greedy_samples, greedy_ref_samples).items()},
        "precursor": {
            **{k: ref_summary[k] for k in ("safety_rate", "harmful_safety_rate", "benign_helpfulness")},
            **{f"greedy_{k}": greedy_ref[k] for k in GREEDY_KEYS},
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
