"""What both sides of the peer benchmark share: the result line, FLOP counting, the GEMM peak, timing.

This file imports only the standard library and torch at module level, because it runs in three
Python environments: the project's own (``saferlhfv.bench.peer_common``) and the peers' isolated
virtual environments, whose scripts (``peer_trl_ppo.py``, ``peer_trl_reward.py``) load it by file
path with :func:`load_sibling` (they cannot import ``saferlhfv``).

Units: FLOPs are floating-point operations as :class:`torch.utils.flop_counter.FlopCounterMode`
counts them (a multiply-add is 2 FLOPs; matmuls, convolutions and attention only: element-wise work
and softmax are not counted); times are seconds; FLOP/s are FLOPs per second; memory is MiB.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: every result line a bench worker prints starts with this (then one JSON object).
RESULT_PREFIX = "SAFERLHFV_PEER_RESULT "


class PeerOutputError(RuntimeError):
    """A worker's output holds no result line (it failed, or printed something else)."""


def result_line(payload: dict[str, Any]) -> str:
    """The one line a worker prints: :data:`RESULT_PREFIX` + compact JSON (NaN / inf refused)."""
    return RESULT_PREFIX + json.dumps(payload, separators=(",", ":"), allow_nan=False, sort_keys=True)


def parse_result(stdout: str, *, stderr: str = "", what: str = "worker") -> dict[str, Any]:
    """The JSON object of the last result line in ``stdout`` (other lines, progress bars and logs, are skipped).

    Raises:
        PeerOutputError: no result line, or one that is not a JSON object; the message quotes the end
            of ``stderr`` (what went wrong in the worker).
    """
    lines = [line.strip() for line in stdout.splitlines()]
    found = [line[len(RESULT_PREFIX) :] for line in lines if line.startswith(RESULT_PREFIX)]
    if not found:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise PeerOutputError(f"the {what} printed no result line ({RESULT_PREFIX.strip()}); its stderr ends:\n{tail}")
    try:
        payload = json.loads(found[-1])
    except json.JSONDecodeError as err:
        raise PeerOutputError(f"the {what}'s result line is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise PeerOutputError(f"the {what}'s result line is not a JSON object")
    return payload


def load_sibling(name: str, *, module_name: str | None = None):
    """Import ``name`` (a file beside this one) by path, without putting this folder on ``sys.path``.

    The peers' scripts use it to load this module: the bench folder holds ``concurrent.py``, which
    would shadow the standard library's ``concurrent`` package if the folder were on ``sys.path``.
    """
    path = Path(__file__).with_name(name)
    module_name = module_name or f"saferlhfv_bench_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def drop_script_folder() -> None:
    """Remove the running script's own folder from ``sys.path`` (see :func:`load_sibling`); call it first."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]


# --------------------------------------------------------------------------- FLOPs


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an ``[m, k] @ [k, n]`` matmul: ``2 * m * n * k`` (one multiply and one add per term)."""
    return 2 * m * n * k


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` under :class:`~torch.utils.flop_counter.FlopCounterMode`.

    Returns:
        ``(fn's result, FLOPs)``: every matmul, convolution and attention kernel dispatched, forward
        and backward (both directions are counted when ``fn`` calls ``backward``), on any device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


def decoder_gemm_shapes(
    *, tokens: int, rows: int, hidden: int, intermediate: int, vocab: int, kv_hidden: int | None = None
) -> list[tuple[int, int, int]]:
    """The ``(m, n, k)`` shapes of a Llama-style decoder's linear layers at two row counts.

    Args:
        tokens: rows of a whole-sequence pass (batch x sequence length): scoring and training.
        rows: rows of one decoding step (the batch).
        hidden, intermediate, vocab: the decoder's widths; ``kv_hidden`` the k / v width (default ``hidden``).

    Returns:
        ``(m, n, k)`` for q / o, k / v, gate / up, down and the LM head, at ``m = tokens`` and ``m = rows``.
    """
    kv = kv_hidden or hidden
    layer = [(hidden, hidden), (kv, hidden), (intermediate, hidden), (hidden, intermediate), (vocab, hidden)]
    return sorted({(m, n, k) for m in (tokens, rows) for n, k in layer})


def gemm_flops_per_s(m: int, n: int, k: int, *, min_seconds: float = 0.15, dtype=None) -> float:
    """Measured FLOP/s of ``torch.mm`` at ``[m, k] @ [k, n]`` on the CPU (after a warm-up; best of 3 runs)."""
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen, dtype=dtype)
    b = torch.randn(k, n, generator=gen, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    reps = 1
    while True:  # size the loop to min_seconds
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        took = time.perf_counter() - start
        if took >= min_seconds / 3 or reps >= 1 << 20:
            break
        reps *= 2
    best = took
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return matmul_flops(m, n, k) * reps / best


def gemm_peak(shapes: Iterable[tuple[int, int, int]], *, min_seconds: float = 0.15) -> dict[str, Any]:
    """The machine's matmul peak at ``shapes``: the best measured FLOP/s among them (and each shape's).

    Returns:
        ``peak_flop_per_s``, ``best_shape`` ``[m, n, k]``, ``shapes``: ``[[m, n, k, FLOP/s], ...]``,
        ``threads`` (torch's intra-op threads while measuring).
    """
    import torch

    rows = [[m, n, k, gemm_flops_per_s(m, n, k, min_seconds=min_seconds)] for m, n, k in shapes]
    best = max(rows, key=lambda r: r[3])
    return {
        "peak_flop_per_s": best[3],
        "best_shape": best[:3],
        "shapes": rows,
        "threads": torch.get_num_threads(),
    }


def mfu(*, flops: float, seconds: float, peak_flop_per_s: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s (``flops / seconds``) over the measured peak, in 0..1+."""
    return flops / seconds / peak_flop_per_s


# --------------------------------------------------------------------------- timing, memory


class StepClock:
    """Marks at the end of each step: wall-clock (:meth:`intervals`) and this process's CPU time
    (:meth:`cpu_intervals`, user + system, all its threads), in seconds.

    On a machine other jobs share, CPU time is the steadier measure of the work a step took: with one
    thread it does not count the time the process waited for a core (wall-clock does).
    """

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def start(self) -> None:
        """Mark the start of the first step."""
        self.marks = [(time.perf_counter(), time.process_time())]

    def tick(self) -> None:
        """Mark the end of a step (and the start of the next)."""
        self.marks.append((time.perf_counter(), time.process_time()))

    def intervals(self, *, skip: int = 0) -> list[float]:
        """Wall-clock durations of the steps after the first ``skip`` (warm-up) ones, in seconds."""
        return [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])][skip:]

    def cpu_intervals(self, *, skip: int = 0) -> list[float]:
        """CPU seconds of the steps after the first ``skip`` ones."""
        return [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])][skip:]


def median(values: Iterable[float]) -> float:
    """The median (``statistics.median``) of a non-empty iterable."""
    return statistics.median(list(values))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``; elsewhere the peak)."""
    import os

    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op threads (``None``: leave them) and return the count in force."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --------------------------------------------------------------------------- a tokenizer built offline


def word_tokenizer(*, vocab_size: int, folder: str | Path | None = None):
    """A word-level fast tokenizer of exactly ``vocab_size`` entries, built locally (no download).

    Entries: ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2), ``<unk>`` (3), then ``w4 .. w{vocab_size-1}``. The
    peers run untrained models on token ids, so the words mean nothing; the tokenizer gives them the pad,
    BOS and EOS ids, padding and decoding. With ``folder``, it is also saved there (``save_pretrained``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(special)}
    vocab.update({f"w{i}": i for i in range(len(special), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if folder is not None:
        tok.save_pretrained(str(folder))
    return tok


def random_token_rows(*, rows: int, length: int, vocab_size: int, seed: int, low: int = 4) -> list[list[int]]:
    """``rows`` lists of ``length`` token ids drawn uniformly from ``low .. vocab_size - 1`` (no special ids)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab_size, (rows, length), generator=gen).tolist()
