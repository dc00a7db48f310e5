"""The Lagrange multiplier of PPO-Lagrangian, learned in log space.

Safe RLHF-V solves ``max_theta J_R(theta)  s.t.  J_C(theta) <= d`` as the min-max

    min_{lambda >= 0} max_theta  J_R(theta) - lambda * (J_C(theta) - d)

The policy takes the inner max (:func:`~saferlhfv.algorithms.losses.actor_loss`);
this class takes lambda's step, by the rule of the paper's code: gradient
descent on ``L(lambda) = -lambda * (J_C - d)`` with respect to ``log lambda``,
whose gradient is ``-lambda * (J_C - d)``, so

    log_lambda <- log_lambda + lambda_lr * lambda * (J_C - d)
    log_lambda <- min(log_lambda, log lambda_max)

``J_C`` is the mean episode cost over a sliding window of recent episodes. Two
properties to know (and to show in the notebooks):

* the step is *multiplicative*: ``lambda' = lambda * exp(lr * lambda * gap)``.
  It can never reach 0 (lambda >= 0 holds by construction), and it grows fast
  when the budget is exceeded, hence ``lambda_max``.
* near 0 it is slow to fall: the step on log lambda shrinks with lambda, so once
  lambda is small it takes many steps under budget to shrink it further.

Distributed runs: every process keeps a window of *its own* episode costs (as
the public code does); ``J_C`` pools the windows of all processes (all-reduce of
their sums and counts, so the mean weighs every episode equally), and every
process applies the same update to the same number: lambda stays identical on
every rank without a broadcast. :meth:`Lagrange.update` is therefore a
collective: every rank must call it, the same number of times.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Lagrange"]

#: log of the largest finite float64, less a margin: keeps exp(log_lambda) finite without a lambda_max.
_LOG_LAMBDA_CAP = 700.0


def _as_floats(costs: torch.Tensor | Iterable[float] | float | None) -> list[float]:
    if costs is None:
        return []
    if isinstance(costs, torch.Tensor):
        return [float(c) for c in costs.detach().flatten().cpu().tolist()]
    if isinstance(costs, (int, float)):
        return [float(costs)]
    return [float(c) for c in costs]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (and the rest) CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Lagrange:
    """The multiplier lambda of PPO-Lagrangian (``PPOConfig.lambda_*``, ``threshold``, ``cost_window``).

    Args:
        lambda_init: lambda at the start, > 0 (paper code: 10).
        lambda_lr: step size on log lambda (paper code: 0.1).
        lambda_max: upper clamp on lambda; None = none (paper code: 20).
        threshold: the budget d on the expected episode cost (paper code: -0.5).
        update_delay_steps: the first ``update_delay_steps`` calls of
            :meth:`update` leave lambda as it is (they do fill the window): call
            number k (counting from 1) changes lambda only when
            ``k > update_delay_steps``. This is the public code's
            ``global_step >= lambda_update_delay_steps`` with its 0-based step
            counter; delay 0 updates from the first call, delay 1 (paper code)
            from the second.
        cost_window: how many of this process's most recent episode costs make
            up J_C (paper code: 128).

    Example::

        lag = Lagrange(10.0, 0.1, 20.0, threshold=-0.5, update_delay_steps=1, cost_window=128)
        stats = lag.update(end_costs)        # once per rollout batch, before the policy step
        loss, _ = actor_loss(..., lam=lag.lambda_, ...)
    """

    def __init__(
        self,
        lambda_init: float,
        lambda_lr: float,
        lambda_max: float | None = None,
        threshold: float = 0.0,
        update_delay_steps: int = 0,
        cost_window: int = 128,
    ) -> None:
        if not lambda_init > 0:
            raise ValueError(f"lambda_init must be > 0 (lambda lives in log space), got {lambda_init}")
        if lambda_max is not None and not lambda_max >= lambda_init:
            raise ValueError(f"lambda_max ({lambda_max}) must be >= lambda_init ({lambda_init}) or None")
        if lambda_lr < 0:
            raise ValueError(f"lambda_lr must be >= 0, got {lambda_lr}")
        if update_delay_steps < 0:
            raise ValueError(f"update_delay_steps must be >= 0, got {update_delay_steps}")
        if cost_window < 1:
            raise ValueError(f"cost_window must be >= 1, got {cost_window}")
        self.lambda_lr = float(lambda_lr)
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        self.threshold = float(threshold)
        self.update_delay_steps = int(update_delay_steps)
        self.cost_window = int(cost_window)
        self._log_lambda = math.log(lambda_init)
        self._fixed: float | None = None
        self.window: deque[float] = deque(maxlen=self.cost_window)
        #: how many times :meth:`update` has been called.
        self.num_updates_called = 0

    # ------------------------------------------------------------------ constructors

    @classmethod
    def fixed(cls, value: float, threshold: float = 0.0, cost_window: int = 128) -> Lagrange:
        """A multiplier frozen at ``value`` (>= 0): the baselines.

        ``value = 0`` is reward-only PPO; ``value > 0`` is fixed reward shaping
        ``(A_r - value * A_c) / (1 + value)``. :meth:`update` still tracks J_C
        (for logging, pooled across ranks) but never changes lambda.
        """
        if value < 0:
            raise ValueError(f"a fixed lambda must be >= 0, got {value}")
        obj = cls(1.0, 0.0, None, threshold=threshold, update_delay_steps=0, cost_window=cost_window)
        obj._fixed = float(value)
        return obj

    @classmethod
    def from_config(cls, ppo: Any) -> Lagrange:
        """The learned multiplier of a :class:`~saferlhfv.config.PPOConfig`.

        ``lambda_init``, ``lambda_lr``, ``lambda_max``, ``threshold``, ``lambda_update_delay_steps``,
        ``cost_window``. (The baselines' fixed multipliers come from :meth:`fixed`, chosen by the
        method in :mod:`saferlhfv.train.ppo.trainer`.)
        """
        return cls(
            ppo.lambda_init,
            ppo.lambda_lr,
            ppo.lambda_max,
            threshold=ppo.threshold,
            update_delay_steps=ppo.lambda_update_delay_steps,
            cost_window=ppo.cost_window,
        )

    # ------------------------------------------------------------------ state

    @property
    def is_fixed(self) -> bool:
        """True for :meth:`fixed` multipliers (never updated)."""
        return self._fixed is not None

    @property
    def log_lambda(self) -> float:
        """log lambda (``-inf`` for a multiplier fixed at 0)."""
        if self._fixed is not None:
            return math.log(self._fixed) if self._fixed > 0 else -math.inf
        return self._log_lambda

    @property
    def lambda_(self) -> float:
        """lambda = exp(log_lambda), a Python float (use it detached, as a constant, in the actor loss)."""
        if self._fixed is not None:
            return self._fixed
        return math.exp(self._log_lambda)

    def cost_mean(self) -> tuple[float, int]:
        """``(J_C, count)``: the mean of the windows pooled over all processes (a collective).

        ``J_C`` is NaN when no cost has been seen anywhere yet.
        """
        total, count = math.fsum(self.window), len(self.window)
        if _distributed():
            buf = torch.tensor([total, float(count)], dtype=torch.float64, device=_reduce_device())
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            total, count = float(buf[0]), int(round(float(buf[1])))
        return (total / count if count else math.nan), count

    def update(self, episode_costs: torch.Tensor | Iterable[float] | float | None) -> dict[str, float | bool | int]:
        """Add this batch's episode costs to the window, then take lambda's step.

        1. append ``episode_costs`` (``[N]`` end costs C of this process's
           rollouts; may be empty) to the window of the last ``cost_window``;
        2. ``J_C`` = mean of the windows of all processes;
        3. if this is call ``k > update_delay_steps``, the multiplier is learned
           and ``J_C`` is defined:
           ``log_lambda += lambda_lr * lambda * (J_C - d)``, then
           ``log_lambda <= log(lambda_max)``.

        Call it once per rollout batch, before the policy step, on every rank.

        Returns:
            ``{"lambda", "log_lambda", "Jc", "cost_gap" (J_C - d), "window" (pooled
            count), "updated" (bool)}``.
        """
        self.window.extend(_as_floats(episode_costs))
        self.num_updates_called += 1
        jc, count = self.cost_mean()
        updated = False
        if self._fixed is None and self.num_updates_called > self.update_delay_steps and count > 0:
            lam = math.exp(self._log_lambda)
            log_lambda = self._log_lambda + self.lambda_lr * lam * (jc - self.threshold)
            if self.lambda_max is not None:
                log_lambda = min(log_lambda, math.log(self.lambda_max))
            self._log_lambda = min(log_lambda, _LOG_LAMBDA_CAP)
            updated = True
        return {
            "lambda": self.lambda_,
            "log_lambda": self.log_lambda,
            "Jc": jc,
            "cost_gap": jc - self.threshold,
            "window": count,
            "updated": updated,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: log lambda, the window, the call count, the settings."""
        return {
            "log_lambda": self._log_lambda,
            "fixed": self._fixed,
            "window": list(self.window),
            "num_updates_called": self.num_updates_called,
            "lambda_lr": self.lambda_lr,
            "lambda_max": self.lambda_max,
            "threshold": self.threshold,
            "update_delay_steps": self.update_delay_steps,
            "cost_window": self.cost_window,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; later updates then match an uninterrupted run exactly.

        The settings come from the state too (a resumed run continues as it was
        started); a window longer than ``cost_window`` keeps its most recent costs.
        """
        self.lambda_lr = float(state["lambda_lr"])
        self.lambda_max = None if state["lambda_max"] is None else float(state["lambda_max"])
        self.threshold = float(state["threshold"])
        self.update_delay_steps = int(state["update_delay_steps"])
        self.cost_window = int(state["cost_window"])
        self._log_lambda = float(state["log_lambda"])
        self._fixed = None if state["fixed"] is None else float(state["fixed"])
        self.window = deque((float(c) for c in state["window"]), maxlen=self.cost_window)
        self.num_updates_called = int(state["num_updates_called"])

    def __repr__(self) -> str:
        if self._fixed is not None:
            return f"Lagrange.fixed({self._fixed})"
        return (
            f"Lagrange(lambda={self.lambda_:.4g}, lambda_lr={self.lambda_lr}, lambda_max={self.lambda_max}, "
            f"threshold={self.threshold}, update_delay_steps={self.update_delay_steps}, "
            f"cost_window={self.cost_window}, window={len(self.window)})"
        )
