r"""Safe GRPO (``ppo.algorithm: grpo_lag``): PPO-Lagrangian without critics, on group baselines.

GRPO (Shao et al. 2024, DeepSeekMath) drops the value network: it samples ``k`` answers per
prompt and scores each against the others of its group. Here the same is done for the reward
*and* the cost, and the two advantages meet the Lagrange multiplier as in PPO-Lagrangian::

    for each prompt x:  y_1 .. y_k ~ pi_old(. | x)          (ppo.samples_per_prompt = k >= 2)
    A_r(y_i) = (R_i - mean_j R_j) / (sigma_R + eps)          R = RM-V's end score
    A_c(y_i) = (C_i - mean_j C_j) / (sigma_C + eps)          C = CM-V's end score (no KL in it)
    A(y_i)   = (A_r - lambda A_c) / (1 + lambda)            every token of y_i gets A(y_i)
    L(theta) = clipped surrogate on A  +  beta * KL_k3(pi_theta || pi_ref)     (beta = ppo.kl_coeff)
    lambda   : the PPO-Lagrangian step on E[C] against the budget d, before the policy step

``sigma`` is the group's std, the batch's std or 1 (``ppo.group_scale``: ``group`` / ``batch`` /
``none``; :func:`~saferlhfv.algorithms.losses.group_advantages`). With ``ppo.group_combine =
"scores"`` the group advantage is taken once, of each answer's Lagrangian score::

    A(y_i)   = group-normalised  S_i = (R_i - lambda C_i) / (1 + lambda)

Separate normalisation turns a benign group's small CM-V spread among safe answers into unit-scale
cost advantages that lambda then multiplies (refusals and helpful answers cost about the same
there); one normalisation per prompt keeps the reward's ranking in such a group and gives every
prompt the same weight.

With ``ppo.group_combine = "budget"`` only the reward is centred in its group; the cost is measured
against the constraint's own threshold ``d`` (the budget; for ``grpo_repo`` the tolerance on the
violation, 0 by default), and one scale is taken over the batch::

    A(y_i)   = [ (R_i - mean_j R_j)  -  lambda (C_i - d) ] / (1 + lambda),   then / std over the batch

Helpfulness is relative (the best answer to *this* question), safety is not: a group whose ``k``
answers are all unsafe has a centred cost advantage of 0, so ``"advantages"`` and ``"scores"`` do
not push such a prompt at all, however unsafe. Against the budget each of its answers is pushed
down by ``lambda (C_i - d)``. Both baselines leave the policy gradient unbiased (neither depends on
the answer it scores). For ``grpo_repo`` the violation ``{C - d_r}^+`` is 0 on every answer within
its budget, so a benign group answered safely is ranked by the reward alone.

Differences from PPO-Lagrangian (:class:`~saferlhfv.train.ppo.trainer.PPOLag`), each one hook:

==========================  =================================================================
hook                        GRPO
==========================  =================================================================
``uses_critics = False``    four roles (actor, reference, RM-V, CM-V): no critics to hold or train
``shape_rewards``           the end score alone: the KL to the reference is a loss term instead
``shape_costs``             the end cost alone
``compute_advantages``      group-normalised outcome scores, broadcast over the answer's tokens
``actor_objective``         clipped surrogate + ``beta * KL_k3``
==========================  =================================================================

The baseline is per *prompt*: whether refusing beats complying is decided among answers to the
same picture and question, which is exactly the image-conditional choice the mini world asks for.
The price: ``k`` answers per prompt, so ``rollout_batch_size / k`` prompts per batch.
"""

from __future__ import annotations

from typing import Any

import torch

from saferlhfv.algorithms.losses import (
    budget_advantages,
    clipped_surrogate,
    group_advantages,
    kl_shaped_costs,
    kl_shaped_rewards,
    reference_kl,
)
from saferlhfv.config import ConfigError
from saferlhfv.train.ppo.repo import RectifiedConstraint
from saferlhfv.train.ppo.rollout import Rollout
from saferlhfv.train.ppo.trainer import PPOLag, register_algorithm

__all__ = ["GRPOLag", "GRPORePO"]


@register_algorithm("grpo_lag")
class GRPOLag(PPOLag):
    """Critic-free safe GRPO: group baselines for reward and cost, lambda learned (module docstring)."""

    uses_critics = False

    def __init__(self, cfg, **kwargs):
        if cfg.ppo.samples_per_prompt < 2:
            raise ConfigError(
                f"ppo.algorithm=grpo_lag compares answers to the same prompt: it needs ppo.samples_per_prompt >= 2 "
                f"(got {cfg.ppo.samples_per_prompt}; 4 is a good start)"
            )
        if cfg.ppo.group_combine not in ("advantages", "scores", "budget"):
            raise ConfigError(
                f"ppo.group_combine must be 'advantages', 'scores' or 'budget', got {cfg.ppo.group_combine!r}"
            )
        if cfg.ppo.rollout_batch_size % cfg.ppo.samples_per_prompt:
            raise ConfigError(
                f"ppo.rollout_batch_size ({cfg.ppo.rollout_batch_size}) must be a multiple of "
                f"ppo.samples_per_prompt ({cfg.ppo.samples_per_prompt}) for grpo_lag"
            )
        super().__init__(cfg, **kwargs)

    def shape_rewards(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` RM-V's score at the last real token, nothing elsewhere (KL is in the loss)."""
        ppo = self.cfg.ppo
        return kl_shaped_rewards(ro.end_reward, ro.old_logp, ro.ref_logp, ro.mask, 0.0, ppo.clip_range_score)

    def shape_costs(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` CM-V's score at the last real token, nothing elsewhere."""
        ppo = self.cfg.ppo
        return kl_shaped_costs(ro.end_cost, ro.old_logp, ro.ref_logp, ro.mask, 0.0, ppo.clip_range_score, False)

    def compute_advantages(self, ro: Rollout, rewards: torch.Tensor, costs: torch.Tensor) -> None:
        """Group advantages of each answer's total reward and cost, on every one of its real tokens.

        Sets ``ro.reward_adv`` / ``ro.cost_adv`` (``[B, T]``); the returns stay ``None`` (no critics).
        """
        ppo, mask = self.cfg.ppo, ro.mask.to(rewards.dtype)
        ro.reward_total, ro.cost_total = (rewards * mask).sum(dim=1), (costs * mask).sum(dim=1)
        for name, total in (("reward_adv", ro.reward_total), ("cost_adv", ro.cost_total)):
            adv = group_advantages(total, ppo.samples_per_prompt, ppo.group_scale)
            setattr(ro, name, adv.unsqueeze(1) * mask)
        ro.reward_ret = ro.cost_ret = None

    def combine_advantages(self, ro: Rollout, lam: float) -> torch.Tensor:
        """``[B, T]`` the actor's advantage on every real token of its answer, by ``ppo.group_combine``:

        * ``"advantages"``: the base's ``(A_r - lambda A_c) / (1 + lambda)`` of the separately
          group-normalised reward and cost;
        * ``"scores"``: the group advantage of each answer's Lagrangian score ``(R - lambda C) / (1 + lambda)``;
        * ``"budget"``: :func:`~saferlhfv.algorithms.losses.budget_advantages` of the reward and the cost
          against the multiplier's threshold (module docstring).
        """
        ppo = self.cfg.ppo
        if ppo.group_combine == "advantages":
            return super().combine_advantages(ro, lam)
        if ppo.group_combine == "budget":
            adv = budget_advantages(
                ro.reward_total, ro.cost_total, group=ppo.samples_per_prompt, lam=lam, budget=self.lagrange.threshold
            )
        else:
            scores = (ro.reward_total - lam * ro.cost_total) / (1.0 + lam)
            adv = group_advantages(scores, ppo.samples_per_prompt, ppo.group_scale)
        return adv.unsqueeze(1) * ro.mask.to(adv.dtype)

    def actor_objective(self, mb: dict[str, Any], logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Clipped surrogate on the group advantage plus ``ppo.kl_coeff`` times KL_k3 to the reference."""
        ppo = self.cfg.ppo
        loss, stats = clipped_surrogate(logp, mb["old_logp"], mb["advantages"], mb["mask"], ppo.clip_range_ratio)
        kl = reference_kl(logp, mb["ref_logp"], mb["mask"])
        stats["reference_kl"] = kl.item()
        return loss + ppo.kl_coeff * kl, stats


@register_algorithm("grpo_repo")
class GRPORePO(RectifiedConstraint, GRPOLag):
    """Safe GRPO with RePO's rectified per-answer constraint (:mod:`~saferlhfv.train.ppo.repo`).

    The cost each answer carries is its violation ``{C - d_r}^+``: in a group of answers that are all
    within budget (a benign prompt answered safely) the cost advantage is exactly 0, so the reward
    alone ranks them; in a group with violations the cost advantage separates the violating answers.
    The multiplier targets zero mean violation, as RePO's.
    """

    def shape_costs(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` the rectified cost at the last real token, nothing elsewhere."""
        ppo = self.cfg.ppo
        return kl_shaped_costs(
            self.violation_costs(ro), ro.old_logp, ro.ref_logp, ro.mask, 0.0, ppo.clip_range_score, False
        )
