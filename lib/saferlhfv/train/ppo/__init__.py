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
* :mod:`~saferlhfv.train.ppo.text_aligned`: PPO-Lagrangian on text-carried prompts only (caption +
  question, neutral picture: ``ppo_lag_text``; with the oracle's scores ``oracle_ppo_lag_text``), the
  setting of ShiftDC's distortion.
The stage's build around it (train, then evaluate against the precursor) is
:mod:`saferlhfv.train.ppo_lag`; budget sweeps and seeds (mean +- std) over cached runs are
:mod:`saferlhfv.sweep`.
"""

from saferlhfv.train.ppo.grpo import GRPOLag, GRPORePO
from saferlhfv.train.ppo.repo import RectifiedConstraint, RePO
from saferlhfv.train.ppo.roles import Roles, SeparateRoles, SharedRoles, build_roles
from saferlhfv.train.ppo.rollout import Rollout, make_rollout
from saferlhfv.train.ppo.text_aligned import OracleTextAlignedPPOLag, TextAlignedPPOLag
from saferlhfv.train.ppo.trainer import (
    ALGORITHMS,
    FixedLambda,
    OracleScores,
    PPOLag,
    PPOTrainer,
    RewardOnly,
    algorithm_class,
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
    "OracleTextAlignedPPOLag",
    "PPOLag",
    "PPOTrainer",
    "RePO",
    "RectifiedConstraint",
    "RewardOnly",
    "algorithm_class",
    "Roles",
    "Rollout",
    "SeparateRoles",
    "SharedRoles",
    "TextAlignedPPOLag",
    "annotate_pairs",
    "build_roles",
    "make_rollout",
    "make_trainer",
    "register_algorithm",
    "run_seed",
]
