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

**Per prompt** (``ppo.repo_scope: prompt``; this project's variant). The per-answer constraint also
enforces the cost model's per-answer mistakes: a benign answer CM-V prices above ``d_r`` is penalised
although the prompt is answered safely on average. Bounding each prompt's *expected* cost instead,
``E_y C(x, y) <= d_r`` for every prompt ``x``, gives ``g = E_x[{E_y C(x, y) - d_r}^+]`` and

    grad_theta g = E_x[ 1[E_y C > d_r] E_y[(C(x, y) - d_r) grad_theta log pi_theta(y | x)] ]

(``d_r`` is a baseline within the prompt). With ``k = ppo.samples_per_prompt`` answers per prompt,
``E_y C`` is their mean: every answer of a prompt within budget carries cost 0 (the reward alone
moves it), every answer of a violating prompt carries ``C - d_r`` (its safe answers are pulled up,
its unsafe ones pushed down), and the multiplier sees the per-prompt violations
(:func:`~saferlhfv.algorithms.losses.prompt_rectified_costs`). It aims at the "unsafe prompts" the
compensation measure counts rather than single answers; on the tiny world every setting measured
lies below the per-answer frontier (README, RePO per prompt): a prompt whose answers are partly
unsafe can meet its mean budget.

==========================  =================================================================
hook                        RePO
==========================  =================================================================
``make_multiplier``         the learned multiplier with target 0 on the mean violation
``multiplier_step``         fed ``{C - d_r}^+`` instead of C (per prompt: ``{mean_k C - d_r}^+``)
``shape_costs``             ``c_t = [t = last] {C - d_r}^+`` (+ beta KL with ``kl_in_cost``); per prompt
                            ``c_t = [t = last] 1[mean_k C > d_r] (C - d_r)``
==========================  =================================================================
"""

from __future__ import annotations

from typing import Any

import torch

from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import kl_shaped_costs, prompt_rectified_costs, rectified_costs
from saferlhfv.config import ConfigError
from saferlhfv.train.ppo.rollout import Rollout
from saferlhfv.train.ppo.trainer import PPOLag, register_algorithm

__all__ = ["RectifiedConstraint", "RePO"]


class RectifiedConstraint:
    """The constraint half of RePO, for any trainer of the registry: ``{C - d_r}^+`` and its multiplier.

    Mixed in before a trainer class (``class X(RectifiedConstraint, PPOLag)``); the trainer's
    ``shape_costs`` places :meth:`violation_costs` where it would place C.
    """

    budget_key = "repo_threshold"

    def __init__(self, cfg, **kwargs):
        self.check_scope(cfg)  # before the trainer builds its roles
        super().__init__(cfg, **kwargs)

    @staticmethod
    def check_scope(cfg) -> None:
        """``ppo.repo_scope`` is "answer" or "prompt"; "prompt" needs groups of answers to one prompt.

        Raises:
            ConfigError: naming the setting to change.
        """
        ppo = cfg.ppo
        if ppo.repo_scope not in ("answer", "prompt"):
            raise ConfigError(f"ppo.repo_scope must be 'answer' or 'prompt', got {ppo.repo_scope!r}")
        if ppo.repo_scope == "prompt" and (
            ppo.samples_per_prompt < 2 or ppo.rollout_batch_size % ppo.samples_per_prompt
        ):
            raise ConfigError(
                "ppo.repo_scope=prompt estimates each prompt's expected cost from its answers: it needs "
                f"ppo.samples_per_prompt >= 2 dividing ppo.rollout_batch_size (got {ppo.samples_per_prompt} and "
                f"{ppo.rollout_batch_size}; e.g. --set ppo.samples_per_prompt=4)"
            )

    def violations(self, ro: Rollout) -> torch.Tensor:
        """The violations the multiplier sees: ``[B]`` ``max(0, C - d_r)`` per answer, or with
        ``ppo.repo_scope = "prompt"`` ``[B / k]`` ``max(0, mean_k C - d_r)`` per prompt."""
        return self._rectified(ro)[1]

    def violation_costs(self, ro: Rollout) -> torch.Tensor:
        """``[B]`` the end cost each answer carries into the policy gradient: its own violation, or with
        ``ppo.repo_scope = "prompt"`` ``1[mean_k C > d_r] (C - d_r)`` (:func:`prompt_rectified_costs`)."""
        return self._rectified(ro)[0]

    def _rectified(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """``(answer costs [B], violations)`` of ``ro``'s end costs under ``ppo.repo_scope``."""
        ppo = self.cfg.ppo
        if ppo.repo_scope == "prompt":
            return prompt_rectified_costs(ro.end_cost, ppo.samples_per_prompt, ppo.repo_threshold)
        violations = rectified_costs(ro.end_cost, ppo.repo_threshold)
        return violations, violations

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
            self.violation_costs(ro),
            ro.old_logp,
            ro.ref_logp,
            ro.mask,
            ppo.kl_coeff,
            ppo.clip_range_score,
            ppo.kl_in_cost,
        )
