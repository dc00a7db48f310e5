"""PPO for Safe RLHF-V as a package with seams.

* :mod:`~saferlhfv.train.ppo.rollout`: sample answers and score them with every role.
* :mod:`~saferlhfv.train.ppo.roles`: the six roles in two layouts (six models, or one shared
  LoRA base) behind one interface.
* :mod:`~saferlhfv.train.ppo.trainer`: the loop, with overridable hooks (multiplier step,
  reward / cost shaping, advantages, their combination), and the ``ppo.algorithm`` registry:
  ``ppo_lag``, ``reward_only``, ``fixed_lambda`` (and the diagnostic ``oracle_ppo_lag``). A new
  method is one subclass and one :func:`register_algorithm` line.
* :mod:`~saferlhfv.train.ppo.repo`: RePO, the rectified per-answer constraint (``repo``).
* :mod:`~saferlhfv.train.ppo.grpo`: safe GRPO, critic-free with group baselines (``grpo_lag``), and
  with RePO's rectified constraint (``grpo_repo``).
* :mod:`~saferlhfv.train.ppo.sweep`: budget sweeps and seeds (mean +- std).

The stage around it (train, evaluate against the precursor, cache, command line) is
:mod:`saferlhfv.train.ppo_lag`.
"""

from saferlhfv.train.ppo.grpo import GRPOLag, GRPORePO
from saferlhfv.train.ppo.repo import RectifiedConstraint, RePO
from saferlhfv.train.ppo.roles import Roles, SeparateRoles, SharedRoles, build_roles
from saferlhfv.train.ppo.rollout import Rollout, make_rollout, response_mask, token_logprobs
from saferlhfv.train.ppo.sweep import SWEEP_ITERATIONS, SWEEP_THRESHOLDS, budget_sweep, mean_std, seed_runs
from saferlhfv.train.ppo.trainer import (
    ALGORITHMS,
    FixedLambda,
    OracleScores,
    PPOLag,
    PPOTrainer,
    RewardOnly,
    annotate_pairs,
    make_trainer,
    register_algorithm,
    run_seed,
)

__all__ = [
    "ALGORITHMS",
    "FixedLambda",
    "GRPOLag",
    "GRPORePO",
    "OracleScores",
    "PPOLag",
    "PPOTrainer",
    "RePO",
    "RectifiedConstraint",
    "RewardOnly",
    "Roles",
    "Rollout",
    "SWEEP_ITERATIONS",
    "SWEEP_THRESHOLDS",
    "SeparateRoles",
    "SharedRoles",
    "annotate_pairs",
    "budget_sweep",
    "build_roles",
    "make_rollout",
    "make_trainer",
    "mean_std",
    "register_algorithm",
    "response_mask",
    "run_seed",
    "seed_runs",
    "token_logprobs",
]
