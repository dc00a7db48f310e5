"""The non-finite guard of every trainer: the first NaN or infinity stops training, loudly.

A NaN loss, reward, cost, advantage or multiplier does not crash PyTorch: it spreads silently
into the weights (and, through the Lagrange step, into log lambda), and every later step and
checkpoint carries it. The trainers call :func:`check_finite` on each of those quantities every
step, *before* it reaches an optimiser, the multiplier or a checkpoint, so the last checkpoint
on disk stays the last good one; the error names the stage, the step, the quantity and that
checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["NonFiniteError", "check_finite"]


class NonFiniteError(RuntimeError):
    """A trainer met a NaN or infinite value; its attributes say where (``stage``, ``step``, ``quantity``,
    ``checkpoint``: the folder of the last good checkpoint, None if there is none yet)."""

    def __init__(self, message: str, *, stage: str, step: int, quantity: str, checkpoint: Path | None):
        super().__init__(message)
        self.stage, self.step, self.quantity, self.checkpoint = stage, step, quantity, checkpoint


def _first_bad(value: Any) -> tuple[int, float] | None:
    """``(index, value)`` of the first non-finite element of ``value`` (flattened), or None."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            bad = ~torch.isfinite(value.detach())
            if bool(bad.any()):
                flat = bad.flatten()
                index = int(flat.nonzero()[0])
                return index, float(value.detach().flatten()[index])
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else (0, float(value))
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        for index, item in enumerate(value):
            if not math.isfinite(float(item)):
                return index, float(item)
        return None
    return None if math.isfinite(float(value)) else (0, float(value))


def check_finite(name: str, value: Any, *, stage: str, step: int, checkpoint: str | Path | None = None) -> None:
    """Raise :class:`NonFiniteError` if ``value`` (a number, a tensor or numbers) holds a NaN or infinity.

    Args:
        name: the quantity (``"loss"``, ``"reward"``, ``"cost"``, ``"advantages"``, ``"lambda"``, ...).
        stage: the training stage (``"sft"``, ``"reward"``, ``"ppo (ppo_lag)"``, ...).
        step: the step (iteration) being taken, 1-based.
        checkpoint: the folder of the last good checkpoint, if any (it is left as it is).
    """
    found = _first_bad(value)
    if found is None:
        return
    index, bad = found
    scalar = isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
    where = "" if scalar else f" (element {index})"
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        last = f"the last good checkpoint is {ckpt} (left intact; training resumes from it once the cause is fixed)"
    else:
        ckpt = None
        last = "there is no checkpoint yet (nothing was saved from this run)"
    raise NonFiniteError(
        f"non-finite {name} = {bad}{where} in stage {stage!r} at step {step}: training stopped; {last}. "
        "Likely causes: a learning rate too high, a score model or data row out of range, a multiplier "
        "without lambda_max.",
        stage=stage,
        step=step,
        quantity=name,
        checkpoint=ckpt,
    )
