"""Scaling curves: ``python -m saferlhfv.bench --scaling`` (about 10 minutes on 2 cores with the default grid).

Episodes/s of whole PPO iterations (wall-clock, and per CPU-second of the worker: steadier when other jobs
share the machine) and the peak memory of the process, for ours in both role layouts
(``separate``: six models, full fine-tuning; ``shared``: one frozen base, five LoRA adapters) and for the
peer (TRL 0.19.1's ``PPOTrainer``, four roles; its venv as ``--peers`` builds it), along three axes
through one base point (rollout batch 16, response length 32, decoder width 128):

* rollout batch (``--scaling-batches``, default 8 16 32 128; the PPO minibatch is the whole batch),
* response length (``--scaling-lengths``, default 16 32 64 128 tokens; untrained models: every answer
  runs to the full length),
* model width (``--scaling-widths``, default 128 256 512: hidden size; heads of 32, MLP 344/128 of the
  width, 4 layers, as :meth:`saferlhfv.bench.ours.Sizes.for_width`).

Each point of each system is one fresh process (one warm-up iteration, ``--scaling-iterations`` (2) timed,
no FLOP counting), so its peak resident memory is its own: MiB, the Python runtime and libraries
included (``rss_before_build_mb`` in the JSON is that baseline, measured after the imports). The
figure is ``figures/bench_scaling.png`` (``$SAFERLHFV_FIGURES`` moves it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferlhfv.bench.ours import Sizes
from saferlhfv.bench.peers import ours_command, peer_command, run_worker, worker_env

#: the systems a scaling run can measure: our two layouts and the peer.
SYSTEMS = ("separate", "shared", "peer")
LABELS = {
    "separate": "saferlhfv, six separate models",
    "shared": "saferlhfv, shared base + LoRA",
    "peer": "TRL 0.19.1 PPOTrainer (4 roles)",
}


@dataclass
class ScalingGrid:
    """The points measured: every value of each axis with the other two at the base point."""

    #: rollout batch sizes (episodes per iteration).
    batches: tuple[int, ...] = (8, 16, 32, 128)
    #: response lengths in tokens.
    lengths: tuple[int, ...] = (16, 32, 64, 128)
    #: decoder widths (hidden size).
    widths: tuple[int, ...] = (128, 256, 512)
    #: the base point (batch, response length, width) the axes pass through.
    base: tuple[int, int, int] = (16, 32, 128)
    #: ours' layouts and / or "peer".
    systems: tuple[str, ...] = SYSTEMS
    #: timed iterations per point (after one warm-up).
    iterations: int = 2
    #: torch threads of every worker (0: the cores this process may use).
    threads: int = 0
    #: the longest one point may run, in seconds.
    timeout_s: float = 900

    def points(self) -> list[tuple[int, int, int]]:
        """Every distinct (batch, length, width), base point first, then by axis."""
        b0, l0, w0 = self.base
        pts = [(b0, l0, w0)] + [(b, l0, w0) for b in self.batches] + [(b0, n, w0) for n in self.lengths]
        pts += [(b0, l0, w) for w in self.widths]
        return list(dict.fromkeys(pts))


def run_scaling(grid: ScalingGrid, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every point of ``grid`` for each system; a failed point is recorded with its error."""
    from saferlhfv.bench.venvs import ensure_venv, peer_envs
    from saferlhfv.threads import available_cores

    say = progress or (lambda line: print(f"[scaling {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True))
    threads = grid.threads or available_cores()
    peer = peer_envs()["trl_ppo"]
    python = ensure_venv(peer, progress=say) if "peer" in grid.systems else None
    rows: list[dict[str, Any]] = []
    prompts: dict[tuple[int, int], int] = {}  # (batch, width) -> ours' padded prompt length
    points = grid.points()
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="saferlhfv-scaling-") as tmp:
        artifacts = Path(tmp) / "artifacts"
        for i, (batch, length, width) in enumerate(points):
            sizes = Sizes.for_width(width)
            for system in grid.systems:
                say(f"point {i + 1}/{len(points)}: batch {batch}, {length} tokens, width {width}: {system}")
                opts = {"batch": batch, "response_length": length, "iterations": grid.iterations, "no_flops": True}
                if system == "peer":
                    opts["prompt_length"] = prompts.get((batch, width), next(iter(prompts.values()), 73))
                    cmd = peer_command(python, peer.script_path(), sizes=sizes, threads=threads, opts=opts)
                    env = worker_env(threads=threads, peer=True)
                else:
                    cmd = ours_command("ppo", sizes=sizes, threads=threads, opts={**opts, "layout": system})
                    env = worker_env(threads=threads, artifacts=artifacts)
                row = {"system": system, "batch": batch, "response_length": length, "width": width}
                try:
                    out = run_worker(cmd, env=env, what=f"{system} worker", timeout_s=grid.timeout_s)
                except Exception as err:  # one point failing (memory, time) keeps the others
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                    say(f"  failed: {row['error']}")
                else:
                    if system != "peer":
                        prompts.setdefault((batch, width), out["prompt_tokens"])
                    row.update({k: out.get(k) for k in ("episodes_per_s", "median_iteration_s", "peak_rss_mb",
                                                        "rss_before_build_mb", "prompt_tokens")})  # fmt: skip
                    if out.get("iteration_cpu_s"):  # the work itself: steadier than wall-clock on a shared machine
                        row["episodes_per_cpu_s"] = round(batch / statistics.median(out["iteration_cpu_s"]), 3)
                    say(f"  {out['episodes_per_s']:.2f} episodes/s, peak {out['peak_rss_mb']:.0f} MiB")
                rows.append(row)
    return {"threads": threads, "base": list(grid.base), "iterations": grid.iterations,
            "systems": list(grid.systems), "seconds": round(time.time() - start, 1), "rows": rows}  # fmt: skip


def axis_rows(result: dict[str, Any], axis: str) -> dict[str, list[dict[str, Any]]]:
    """Rows along one axis (``batch``, ``response_length`` or ``width``) through the base point, per system."""
    b0, l0, w0 = result["base"]
    fixed = {"batch": b0, "response_length": l0, "width": w0}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        if "error" in r or any(r[k] != v for k, v in fixed.items() if k != axis):
            continue
        out.setdefault(r["system"], []).append(r)
    return {s: sorted(rows, key=lambda r: r[axis]) for s, rows in out.items()}


AXES = (("batch", "rollout batch (episodes)"), ("response_length", "response length (tokens)"),
        ("width", "decoder width (hidden size)"))  # fmt: skip


def plot_scaling(result: dict[str, Any]):
    """Three rows of three panels: episodes/s (wall-clock), episodes per CPU-second and peak memory against
    each axis, one line per system."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 10), constrained_layout=True)
    styles = {"separate": ("C0", "o"), "shared": ("C2", "s"), "peer": ("C3", "^")}
    for col, (axis, title) in enumerate(AXES):
        for system, rows in axis_rows(result, axis).items():
            color, marker = styles.get(system, ("C7", "x"))
            xs = [r[axis] for r in rows]
            axes[0, col].plot(xs, [r["episodes_per_s"] for r in rows], marker=marker, color=color,
                              label=LABELS.get(system, system))  # fmt: skip
            cpu = [r.get("episodes_per_cpu_s") for r in rows]
            if all(cpu):
                axes[1, col].plot(xs, cpu, marker=marker, color=color)
            axes[2, col].plot(xs, [r["peak_rss_mb"] for r in rows], marker=marker, color=color)
        values = sorted({r[axis] for rows in axis_rows(result, axis).values() for r in rows})
        for row in (0, 1, 2):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            if values:
                ax.set_xticks(values, [str(v) for v in values])
                ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_xlabel(title)
    axes[0, 0].set_ylabel("episodes / s (wall-clock, whole PPO iterations)")
    axes[1, 0].set_ylabel("episodes per CPU-second of the worker")
    axes[2, 0].set_ylabel("peak resident memory of the process (MiB)")
    axes[0, 0].legend(fontsize=8)
    b0, l0, w0 = result["base"]
    fig.suptitle(f"PPO scaling, {result['threads']} torch thread(s) (base point: batch {b0}, {l0} tokens, width {w0}; "
                 "untrained models, every answer to full length)", fontsize=10)  # fmt: skip
    return fig


def format_scaling(result: dict[str, Any]) -> str:
    """The table ``--scaling`` prints: episodes/s and peak MiB per point and system."""
    systems = result["systems"]
    head = f"{'batch':>5} {'tokens':>6} {'width':>5} " + " ".join(f"{s[:16]:>27}" for s in systems)
    lines = [f"PPO scaling, {result['threads']} threads, {result['seconds']:.0f} s; episodes/s, per CPU-second "
             "(peak MiB)", head]  # fmt: skip
    table: dict[tuple[int, int, int], dict[str, dict[str, Any]]] = {}
    for r in result["rows"]:
        table.setdefault((r["batch"], r["response_length"], r["width"]), {})[r["system"]] = r
    for (b, n, w), per in table.items():
        cells = []
        for s in systems:
            r = per.get(s)
            cpu = "-" if r is None or r.get("episodes_per_cpu_s") is None else f"{r['episodes_per_cpu_s']:.2f}"
            cells.append("-" if r is None else "error" if "error" in r else
                         f"{r['episodes_per_s']:.2f}, {cpu} ({r['peak_rss_mb']:.0f})")  # fmt: skip
        lines.append(f"{b:>5} {n:>6} {w:>5} " + " ".join(f"{c:>27}" for c in cells))
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"error at batch {r['batch']}, {r['response_length']} tokens, width {r['width']}, "
                         f"{r['system']}: {r['error']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m saferlhfv.bench --scaling [options]``."""
    from saferlhfv.bench.venvs import PeerEnvError
    from saferlhfv.plotting import save_figure

    d = ScalingGrid()
    p = argparse.ArgumentParser(prog="python -m saferlhfv.bench --scaling", description=__doc__.splitlines()[0])
    p.add_argument("--scaling", action="store_true", help="(the mode switch)")
    p.add_argument("--scaling-batches", type=int, nargs="+", default=list(d.batches))
    p.add_argument("--scaling-lengths", type=int, nargs="+", default=list(d.lengths))
    p.add_argument("--scaling-widths", type=int, nargs="+", default=list(d.widths))
    p.add_argument("--scaling-base", type=int, nargs=3, default=list(d.base), metavar=("BATCH", "LENGTH", "WIDTH"))
    p.add_argument("--scaling-systems", nargs="+", choices=SYSTEMS, default=list(d.systems))
    p.add_argument("--scaling-iterations", type=int, default=d.iterations, help="timed iterations per point")
    p.add_argument("--threads", type=int, default=0, help="threads of every worker (default: the usable cores)")
    p.add_argument("--no-figure", action="store_true", help="do not write figures/bench_scaling.png")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    grid = ScalingGrid(batches=tuple(args.scaling_batches), lengths=tuple(args.scaling_lengths),
                       widths=tuple(args.scaling_widths), base=tuple(args.scaling_base),
                       systems=tuple(args.scaling_systems), iterations=args.scaling_iterations,
                       threads=args.threads)  # fmt: skip
    try:
        result = run_scaling(grid)
    except PeerEnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if not args.no_figure:
        paths = save_figure(plot_scaling(result), "bench_scaling")
        result["figure"] = [str(p) for p in paths]
    print(json.dumps(result, indent=1) if args.json else format_scaling(result))
    if not args.json and result.get("figure"):
        print(f"figure: {', '.join(result['figure'])}")
    return 0
