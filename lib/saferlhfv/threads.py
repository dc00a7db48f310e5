"""Share the CPU cores among saferlhfv jobs running at once (the pipeline and a notebook, say).

Every torch process uses all cores by default. Two such processes on a 2-core laptop fight over
them: each one's OpenMP threads spin while waiting for the other's, and both crawl (together
about half the work of one alone). This module gives each *busy* saferlhfv process its share:

    threads = max(1, cores // busy_workers)

A process is a busy worker while it is inside :func:`busy` (stage builds, training loops,
batched generation enter it); it registers by writing a file named after its pid into a
machine-wide folder (``SAFERLHFV_WORKERS_DIR``, default ``<tmp>/saferlhfv-workers-<uid>``), and
files of processes that no longer exist are removed when counted. Long loops call
:func:`rebalance` every step; it recounts at most once per :data:`RECHECK_SECONDS`, so a job
started beside a running one is shared with within a few seconds, and a job left alone gets
its cores back.

The user's explicit setting always wins: with ``SAFERLHFV_THREADS``, ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` in the environment, or after a ``torch.set_num_threads`` of the user's own,
the thread count is left alone. ``SAFERLHFV_THREAD_POLICY=off`` turns the policy off.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "RECHECK_SECONDS",
    "available_cores",
    "busy",
    "idle",
    "live_workers",
    "rebalance",
    "threads_for",
    "user_threads",
    "workers_dir",
]

#: the least time between two recounts of the busy workers by :func:`rebalance`.
RECHECK_SECONDS = 2.0
#: environment variables whose value fixes the thread count (the user's explicit choice).
USER_VARIABLES = ("SAFERLHFV_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_depth = 0  # nesting of busy() in this process
_last_check = -float("inf")
_ours: int | None = None  # the thread count this module last set (None: never set)
_user_took_over = False


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(cores: int, workers: int) -> int:
    """Threads per busy worker: ``max(1, cores // workers)`` (a lone worker gets every core)."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    return max(1, cores // max(1, workers))


def user_threads() -> int | None:
    """The thread count the environment fixes (``SAFERLHFV_THREADS``, ``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS``, first set wins), or None."""
    for name in USER_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a whole number of threads") from None
    return None


def workers_dir() -> Path:
    """The machine-wide folder of busy workers' pid files (``SAFERLHFV_WORKERS_DIR`` overrides it)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(os.environ.get("SAFERLHFV_WORKERS_DIR") or Path(tempfile.gettempdir()) / f"saferlhfv-workers-{uid}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def live_workers() -> int:
    """How many processes are busy now (this one included when it is); removes dead ones' files."""
    count = 0
    for path in workers_dir().iterdir():
        if not path.name.isdigit():
            continue
        if _alive(int(path.name)):
            count += 1
        else:
            path.unlink(missing_ok=True)
    return count


def _policy_on() -> bool:
    return os.environ.get("SAFERLHFV_THREAD_POLICY", "on").lower() not in ("off", "0", "false", "no")


def rebalance(*, force: bool = False) -> int:
    """Set this process's torch threads to its share of the cores; returns the thread count in use.

    Recounts the busy workers at most once per :data:`RECHECK_SECONDS` unless ``force``. Leaves
    the count alone when the user fixed it (environment, or a ``torch.set_num_threads`` since
    this module last set it) or when the policy is off.
    """
    global _last_check, _ours, _user_took_over
    current = torch.get_num_threads()
    if _ours is not None and current != _ours:
        _user_took_over = True
    if _user_took_over or not _policy_on():
        return current
    fixed = user_threads()
    if fixed is not None:
        return current
    now = time.monotonic()
    if not force and now - _last_check < RECHECK_SECONDS:
        return current
    _last_check = now
    want = threads_for(available_cores(), live_workers())
    if want != current:
        torch.set_num_threads(want)
    _ours = want
    return want


@contextmanager
def busy() -> Iterator[int]:
    """Count this process as a busy worker inside the block (re-entrant); yields its thread count.

    Registers before sharing out the cores, so two jobs that start together each see the other.
    """
    global _depth
    path = workers_dir() / str(os.getpid())
    if _depth == 0:
        path.touch()
    _depth += 1
    try:
        yield rebalance(force=_depth == 1)
    finally:
        _depth -= 1
        if _depth == 0:
            path.unlink(missing_ok=True)


@contextmanager
def idle() -> Iterator[None]:
    """Not a busy worker inside the block, even within :func:`busy` (waiting for another process's
    artifact computes nothing); the cores are shared out again when the block ends."""
    path = workers_dir() / str(os.getpid())
    registered = _depth > 0
    if registered:
        path.unlink(missing_ok=True)
    try:
        yield
    finally:
        if registered:
            path.touch()
            rebalance(force=True)
