"""Fault injection for the kill-and-resume tests: a hard kill at a named point of training.

``SAFERLHFV_KILL_AT="point:n"`` (several: comma separated) makes this process kill itself with
``SIGKILL`` the ``n``-th time it reaches ``point``: no exception, no ``finally``, no flush, as an
out-of-memory kill or a pre-empted job ends a run. Unset (always, outside ``tests/test_resume.py``),
:func:`reached` costs one dictionary lookup.

The points (:data:`POINTS`):

=====================  ==========================================================================
``step``               after an optimiser step of the training loop, before its checkpoint (if any)
``iteration``          after a PPO iteration is logged, before its checkpoint (if any)
``checkpoint:tmp``     a checkpoint's files are written into ``.checkpoint.tmp``, its state is not
``checkpoint:old``     the previous checkpoint was moved aside to ``.checkpoint.old``, the new one
                       is not in place yet
``checkpoint:swapped`` the new checkpoint is in place, ``.checkpoint.old`` not yet removed
=====================  ==========================================================================
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reached"]

#: the points a test may kill a run at (module docstring).
POINTS = ("step", "iteration", "checkpoint:tmp", "checkpoint:old", "checkpoint:swapped")

_counts: dict[str, int] = {}


def _plan() -> dict[str, int]:
    spec = os.environ.get("SAFERLHFV_KILL_AT", "")
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, n = item.rpartition(":")
        if point not in POINTS or not n.isdigit():
            raise ValueError(f"SAFERLHFV_KILL_AT: {item!r} is not point:n with a point of {POINTS}")
        plan[point] = int(n)
    return plan


def reached(point: str) -> None:
    """Count a visit to ``point``; SIGKILL this process at the visit ``SAFERLHFV_KILL_AT`` names."""
    if "SAFERLHFV_KILL_AT" not in os.environ:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _plan().get(point) == _counts[point]:
        os.kill(os.getpid(), signal.SIGKILL)
