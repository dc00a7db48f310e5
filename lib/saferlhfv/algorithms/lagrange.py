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

from saferlhfv.finite import check_finite

__all__ = ["Lagrange", "PIDLagrange", "MULTIPLIERS"]

#: ``ppo.multiplier`` names: the paper's log-space gradient step, or the PID controller.
MULTIPLIERS = ("log", "pid")

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


def _finite_costs(lag: Lagrange, episode_costs) -> list[float]:
    """The batch's costs as floats; a NaN / inf one raises :class:`~saferlhfv.finite.NonFiniteError`
    before it enters the window (and so before it can reach log lambda), as omnisafe asserts."""
    costs = _as_floats(episode_costs)
    check_finite("episode cost", costs, stage=type(lag).__name__, step=lag.num_updates_called + 1)
    return costs


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
        ``cost_window``; with ``multiplier: pid`` a :class:`PIDLagrange` with ``pid_kp``, ``pid_ki``,
        ``pid_kd`` instead of ``lambda_lr`` (an object without a ``multiplier`` field gets the plain
        update). (The baselines' fixed multipliers come from :meth:`fixed`, chosen by the method in
        :mod:`saferlhfv.train.ppo.trainer`.)
        """
        kind = getattr(ppo, "multiplier", "log")
        if kind not in MULTIPLIERS:
            raise ValueError(f"unknown multiplier {kind!r}; choose from {list(MULTIPLIERS)}")
        if kind == "pid":
            return PIDLagrange(
                ppo.lambda_init,
                kp=ppo.pid_kp,
                ki=ppo.pid_ki,
                kd=ppo.pid_kd,
                lambda_max=ppo.lambda_max,
                threshold=ppo.threshold,
                update_delay_steps=ppo.lambda_update_delay_steps,
                cost_window=ppo.cost_window,
            )
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
           rollouts; may be empty) to the window of the last ``cost_window``
           (a NaN / inf cost raises :class:`~saferlhfv.finite.NonFiniteError` and changes nothing);
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
        self.window.extend(_finite_costs(self, episode_costs))
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
        if state.get("kind", "log") != "log" and type(self) is Lagrange:
            raise ValueError(f"this checkpoint holds a {state['kind']!r} multiplier, not the plain log-space one")
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


class PIDLagrange(Lagrange):
    r"""A PID-controlled multiplier (Stooke, Achiam and Abbeel, "Responsive Safety in Reinforcement
    Learning by PID Lagrangian Methods", ICML 2020, their Algorithm 2).

    The plain update is an integral controller: lambda keeps growing while the cost is over budget
    and only starts to fall once it is under, so it overshoots and the policy swings between
    complying and refusing (DESIGN's failure mode 2). A proportional term reacts to the gap *now*,
    a derivative term to the cost *rising*; with the gap ``e_k = J_C - d`` of update ``k``::

        I_k      = max(0, I_{k-1} + ki * e_k)                  I_0 = lambda_init
        lambda_k = clip(kp * e_k + I_k + kd * max(0, J_C,k - J_C,k-1), 0, lambda_max)

    ``kp = kd = 0`` is a plain integral controller on lambda itself (not on log lambda). The integral
    is clamped to ``[0, lambda_max]`` (anti-windup: it cannot store more than the clamp lets out).
    Lambda may be 0 here (the proportional term can switch the constraint off while the cost is
    well under budget). Distributed use, the window, the delay and resuming are those of
    :class:`Lagrange`.

    Args:
        lambda_init: the integral's start value (lambda before the first update), >= 0.
        kp, ki, kd: the gains on the gap, its sum and the cost's rise (>= 0).
        Other arguments as in :class:`Lagrange`.
    """

    def __init__(
        self,
        lambda_init: float,
        *,
        kp: float,
        ki: float,
        kd: float = 0.0,
        lambda_max: float | None = None,
        threshold: float = 0.0,
        update_delay_steps: int = 0,
        cost_window: int = 128,
    ) -> None:
        if lambda_init < 0:
            raise ValueError(f"lambda_init must be >= 0, got {lambda_init}")
        for name, gain in (("kp", kp), ("ki", ki), ("kd", kd)):
            if gain < 0:
                raise ValueError(f"the PID gain {name} must be >= 0, got {gain}")
        super().__init__(max(lambda_init, 1e-12), 0.0, lambda_max, threshold=threshold,
                         update_delay_steps=update_delay_steps, cost_window=cost_window)  # fmt: skip
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.integral = float(lambda_init)
        self._lambda = float(lambda_init)
        self.previous_jc: float | None = None

    @property
    def log_lambda(self) -> float:
        return math.log(self._lambda) if self._lambda > 0 else -math.inf

    @property
    def lambda_(self) -> float:
        return self._lambda

    def update(self, episode_costs: torch.Tensor | Iterable[float] | float | None) -> dict[str, float | bool | int]:
        """Add this batch's costs to the window, then set lambda by the PID rule (the class docstring).

        Returns:
            :meth:`Lagrange.update`'s keys plus ``"pid_p"``, ``"pid_i"``, ``"pid_d"`` (the three terms).
        """
        self.window.extend(_finite_costs(self, episode_costs))
        self.num_updates_called += 1
        jc, count = self.cost_mean()
        updated = False
        p = d = 0.0
        if self.num_updates_called > self.update_delay_steps and count > 0:
            gap = jc - self.threshold
            cap = math.inf if self.lambda_max is None else self.lambda_max
            self.integral = min(max(0.0, self.integral + self.ki * gap), cap)
            p = self.kp * gap
            d = self.kd * max(0.0, jc - self.previous_jc) if self.previous_jc is not None else 0.0
            self._lambda = min(max(0.0, p + self.integral + d), cap)
            updated = True
        if count > 0:
            self.previous_jc = jc
        return {
            "lambda": self.lambda_,
            "log_lambda": self.log_lambda,
            "Jc": jc,
            "cost_gap": jc - self.threshold,
            "window": count,
            "updated": updated,
            "pid_p": p,
            "pid_i": self.integral,
            "pid_d": d,
        }

    def state_dict(self) -> dict[str, Any]:
        """:meth:`Lagrange.state_dict` plus the gains, the integral, lambda and the last J_C."""
        return {**super().state_dict(), "kind": "pid", "kp": self.kp, "ki": self.ki, "kd": self.kd,
                "integral": self.integral, "lambda": self._lambda, "previous_jc": self.previous_jc}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "pid":
            raise ValueError("this checkpoint holds a plain (log-space) multiplier, not a PID one")
        super().load_state_dict(state)
        self.kp, self.ki, self.kd = float(state["kp"]), float(state["ki"]), float(state["kd"])
        self.integral, self._lambda = float(state["integral"]), float(state["lambda"])
        self.previous_jc = None if state["previous_jc"] is None else float(state["previous_jc"])

    def __repr__(self) -> str:
        return (
            f"PIDLagrange(lambda={self._lambda:.4g}, kp={self.kp}, ki={self.ki}, kd={self.kd}, "
            f"lambda_max={self.lambda_max}, threshold={self.threshold}, window={len(self.window)})"
        )
