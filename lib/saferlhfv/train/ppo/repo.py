r"""RePO (``ppo.algorithm: repo``): a per-answer, rectified safety constraint instead of E[C] <= d.

*This project's reading of* Rectified Policy Optimization (Peng et al. 2024, arXiv 2410.19933).
The public sources give the idea (a critical constraint on every prompt, the rectified penalty
``{C(x, y)}^+``, a min-max Lagrangian, token-level rewards and costs, PPO clipping) but not the
exact updates; what follows is what is implemented here, derived step by step.

**Why.** PPO-Lagrangian constrains the *expected* cost, ``E_{x,y}[C(x, y)] <= d``. Benign
compliance is very safe under CM-V (cost about -5), so a policy can meet the budget on average
while it still answers some harmful prompts: *safety compensation*.

**Problem.** Every answer must be within a per-answer budget ``d_r`` (``ppo.repo_threshold``,
0 = RePO's ``C(x, y) <= 0``: CM-V calls the answer safe)::

    max_theta  E[R(x, y)]   s.t.   C(x, y) <= d_r  for (almost) every (x, y) ~ pi_theta

The family of constraints is equivalent to one: ``g(theta) = E[{C(x, y) - d_r}^+] <= 0``, with
``{z}^+ = max(0, z)``, since a mean of non-negative terms is 0 only when every term is.

**Lagrangian.** ``L(theta, lambda) = E[R] - lambda * E[{C - d_r}^+]``, ``lambda >= 0``:
``min_lambda max_theta L``.

**Policy step.** By the score-function identity, ``grad_theta E[f(x, y)] = E[f grad log pi]``, so

    grad_theta L = E[ (R - lambda {C - d_r}^+) grad_theta log pi_theta(y | x) ]

i.e. PPO-Lagrangian with the per-answer cost replaced by its rectified value. An answer within
its budget contributes 0 to the cost term: its gradient is the reward's alone (no pressure to
refuse a benign request further), while a violating answer is pushed down in proportion to how
far it is over. With tokens: the rectified cost is placed at the last real token (token-level
decomposition of the sequence cost, as for the reward), its advantage comes from the cost
critic and GAE, and the actor takes the clipped surrogate on ``(A_r - lambda A_c) / (1 + lambda)``
as in PPO-Lagrangian.

**Multiplier step.** ``d L / d lambda = -g(theta)``; descent on ``lambda`` in log space as in
:class:`~saferlhfv.algorithms.lagrange.Lagrange`::

    log lambda <- log lambda + lambda_lr * lambda * (J_V - epsilon),   J_V = window mean of {C - d_r}^+

With ``epsilon = 0`` (``ppo.repo_tolerance``, the exact problem) ``J_V >= 0``, so lambda never
falls: it rises while violations remain and stays where it is once none are seen, up to
``lambda_max``; the target of zero violations cannot be over-satisfied, so lambda ends as a fixed
penalty at its cap. A tolerance ``epsilon > 0`` relaxes the constraint to
``E[{C - d_r}^+] <= epsilon`` (violations rare and small, not absent): lambda then also falls
once the policy is inside it, as under an expected-cost budget, and frees the reward's gradient.

==========================  =================================================================
hook                        RePO
==========================  =================================================================
``make_multiplier``         the learned multiplier with target 0 on the mean violation
``multiplier_step``         fed ``{C - d_r}^+`` instead of C
``shape_costs``             ``c_t = [t = last] {C - d_r}^+`` (+ beta KL with ``kl_in_cost``)
==========================  =================================================================
"""

from __future__ import annotations

from typing import Any

import torch

from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import kl_shaped_costs, rectified_costs
from saferlhfv.train.ppo.rollout import Rollout
from saferlhfv.train.ppo.trainer import PPOLag, register_algorithm

__all__ = ["RectifiedConstraint", "RePO"]


class RectifiedConstraint:
    """The constraint half of RePO, for any trainer of the registry: ``{C - d_r}^+`` and its multiplier.

    Mixed in before a trainer class (``class X(RectifiedConstraint, PPOLag)``); the trainer's
    ``shape_costs`` places :meth:`violations` where it would place C.
    """

    budget_key = "repo_threshold"

    def violations(self, ro: Rollout) -> torch.Tensor:
        """``[B]`` the rectified end costs ``max(0, C - ppo.repo_threshold)`` of this batch's answers."""
        return rectified_costs(ro.end_cost, self.cfg.ppo.repo_threshold)

    def make_multiplier(self) -> Lagrange:
        """``ppo.lambda_*`` as PPO-Lagrangian, but the target is a mean violation of ``ppo.repo_tolerance``."""
        ppo = self.cfg.ppo
        return Lagrange(
            ppo.lambda_init,
            ppo.lambda_lr,
            ppo.lambda_max,
            threshold=ppo.repo_tolerance,
            update_delay_steps=ppo.lambda_update_delay_steps,
            cost_window=ppo.cost_window,
        )

    def multiplier_step(self, ro: Rollout) -> dict[str, Any]:
        """Step lambda on the batch's violations (pooled over processes), before the policy."""
        return self.lagrange.update(self.violations(ro))


@register_algorithm("repo")
class RePO(RectifiedConstraint, PPOLag):
    """PPO with the rectified per-answer cost ``{C - d_r}^+`` and its multiplier (module docstring)."""

    def shape_costs(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` the rectified cost at the last real token (+ beta KL with ``kl_in_cost``)."""
        ppo = self.cfg.ppo
        return kl_shaped_costs(
            self.violations(ro), ro.old_logp, ro.ref_logp, ro.mask, ppo.kl_coeff, ppo.clip_range_score, ppo.kl_in_cost
        )
