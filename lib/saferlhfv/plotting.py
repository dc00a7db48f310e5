"""Figures: the helper every notebook saves with, and the notebooks' plots
(learning curves; the dual-dynamics, response-curve and trade-off figures of notebook 06).

Every plot takes plain dicts / arrays and returns a ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from saferlhfv.io import read_metrics
from saferlhfv.paths import figures_dir

__all__ = [
    "save_figure",
    "plot_learning_curves",
    "plot_dual",
    "plot_response_curve",
    "plot_threshold_curves",
    "plot_tradeoff",
    "short_category",
]


def save_figure(fig, name: str, *, formats: tuple[str, ...] = ("png",), dpi: int = 120) -> list[Path]:
    """Save a matplotlib figure into ``figures/`` (or ``$SAFERLHFV_FIGURES``).

    Args:
        fig: a ``matplotlib.figure.Figure``.
        name: file stem, by convention ``<notebook number>_<what>``, e.g. ``"05_lambda_trajectory"``.
        formats: file extensions to write.
        dpi: resolution of raster formats.

    Returns:
        The paths written.
    """
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def plot_learning_curves(runs: dict, *, keys: tuple[str, ...] = ("loss",), x: str = "step", smooth: int = 10):
    """One panel per metric key, one line per run, from ``metrics.jsonl`` files.

    Args:
        runs: ``{label: path to metrics.jsonl}``.
        keys: metric names to plot; train records (``split == "train"``) are smoothed with a
            running mean over ``smooth`` points, eval records (``split == "eval"``) drawn as markers.
        x: the x-axis field (``step`` for supervised stages, ``iteration`` for PPO).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, path in runs.items():
            records = read_metrics(path)
            train = [(r[x], r[key]) for r in records if r.get("split", "train") == "train" and key in r]
            evals = [(r[x], r[key]) for r in records if r.get("split") == "eval" and key in r]
            if train:
                xs, ys = map(np.asarray, zip(*train))
                k = max(1, min(smooth, len(ys)))
                ax.plot(xs[k - 1 :], np.convolve(ys, np.ones(k) / k, mode="valid"), label=label)
            if evals:
                xs, ys = zip(*evals)
                ax.plot(xs, ys, "o--", label=f"{label} (eval)")
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


#: lambda is drawn clipped to this range (without a cap it can overflow to e^700, or underflow to exactly 0).
_LAMBDA_SHOWN = (1e-4, 1e4)

_DUAL_PANELS = (
    ("lambda", "multiplier $\\lambda$"),
    ("cost", "expected cost $E[C]$ vs budget $d$"),
    ("reward", "expected reward $E[R]$"),
    ("harmful_safety", "oracle: safety on harmful prompts"),
)


def plot_dual(
    results: Mapping[str, Mapping[str, np.ndarray]],
    *,
    fig=None,
    equilibria: Mapping[str, float] | None = None,
    title: str | None = None,
):
    """Four panels over iterations: lambda, E[C] with the budget, E[R], oracle harmful-prompt safety.

    Args:
        results: ``{label: simulate_dual(...)}`` (or a trainer's metrics as the same keys).
        fig: draw into this figure (cleared) instead of a new one.
        equilibria: ``{label: lambda*}`` drawn as dotted lines on the lambda panel.

    Returns:
        The figure; ``fig.axes[i].lines`` hold the plotted data in ``results`` order (lambda clipped
        to 1e-4..1e4 for display).
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(13, 3.2))
    fig.clear()
    axes = fig.subplots(1, len(_DUAL_PANELS))
    colors = [f"C{i}" for i in range(10)]
    for i, (label, res) in enumerate(results.items()):
        c = colors[i % 10]
        for ax, (key, _) in zip(axes, _DUAL_PANELS):
            if key in res:
                y = np.clip(res[key], *_LAMBDA_SHOWN) if key == "lambda" else res[key]
                ax.plot(res["iteration"], y, color=c, lw=1.4, label=label)
        axes[1].plot(res["iteration"], res["threshold"], color=c, ls="--", lw=1)
        if equilibria and label in equilibria and math.isfinite(equilibria[label]):
            axes[0].axhline(equilibria[label], color=c, ls=":", lw=1)
    for ax, (_, name) in zip(axes, _DUAL_PANELS):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    shown = [np.clip(r["lambda"], *_LAMBDA_SHOWN) for r in results.values() if "lambda" in r]
    if shown:
        lo, hi = min(float(x.min()) for x in shown), max(float(x.max()) for x in shown)
        axes[0].set_ylim(lo / 1.5, hi * 1.5)
    axes[-1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_response_curve(curve: Mapping[str, np.ndarray], *, threshold: float | None = None, lam_star=None, fig=None):
    """The stationary policy's E[C], E[R] and oracle safety against a fixed lambda (log axis)."""
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(10, 3.2))
    fig.clear()
    axes = fig.subplots(1, 3)
    lam = curve["lambda"]
    axes[0].plot(lam, curve["cost"], color="C1")
    axes[1].plot(lam, curve["reward"], color="C0")
    axes[2].plot(lam, curve["harmful_safety"], color="C2", label="safety, harmful prompts")
    axes[2].plot(lam, curve["benign_helpfulness"] / 3, color="C4", label="helpfulness / 3, benign prompts")
    if threshold is not None:
        axes[0].axhline(threshold, ls="--", color="k", lw=1, label="budget d")
    if lam_star is not None and math.isfinite(lam_star) and lam_star > 0:
        for ax in axes:
            ax.axvline(lam_star, ls=":", color="k", lw=1)
    for ax, name in zip(axes, ("stationary $E_\\lambda[C]$", "stationary $E_\\lambda[R]$", "oracle")):
        ax.set_xscale("log")
        ax.set_xlabel("fixed $\\lambda$")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def short_category(category: str) -> str:
    """A harm category's config name for a tick label: ``"sexual_crimes"`` -> ``"sexual crimes"``."""
    return category.replace("_and_", " & ").replace("_", " ")


def plot_threshold_curves(
    grid: np.ndarray, curve: list[Mapping[str, Any]], threshold: float, *, title: str | None = None, fig=None
):
    """Recall, precision and false-positive rate of a guard against its threshold, a line at ``threshold``.

    Args:
        grid: ``[G]`` thresholds on ``p_unsafe``.
        curve: :func:`saferlhfv.guardrail.threshold_tradeoff` at each threshold of ``grid`` (None = undefined).

    Returns:
        The figure; ``fig.axes[0].lines[3]`` is the threshold's vertical line.
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(6.5, 4))
    fig.clear()
    ax = fig.subplots()
    for key, style in (("recall", "o-"), ("precision", "s-"), ("false_positive_rate", "^-")):
        values = [c[key] if c[key] is not None else np.nan for c in curve]
        ax.plot(grid, values, style, ms=3, label=key.replace("_", " "))
    ax.axvline(threshold, color="grey", ls=":")
    ax.set_xlabel("threshold on p_unsafe")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_tradeoff(
    frontier: Mapping[str, Any],
    point: Mapping[str, Any],
    *,
    precursor: Mapping[str, Any] | None = None,
    extra: Mapping[str, Mapping[str, float]] | None = None,
    fig=None,
):
    """Left: the frontier (helpful win rate vs safety rate) with the budget's point; right: per-category safety.

    Args:
        point: :func:`tradeoff_at`'s output.
        precursor: the precursor's numbers (a star on the left, grey bars on the right).
        extra: other policies to mark on the left, ``{label: {"helpful_winrate", "safety_rate"}}``.

    Returns:
        The figure; ``fig.axes[0].lines[1]`` is the point, ``fig.axes[1].patches`` the bars.
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(13, 4))
    fig.clear()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.8]})
    left.plot(frontier["helpful_winrate"], frontier["safety_rate"], "o-", color="C0", label="trained budgets")
    style = "o" if not point["interpolated"] else "D"
    left.plot([point["helpful_winrate"]], [point["safety_rate"]], style, ms=12, mfc="none", mec="C3", mew=2,
              label=f"d = {point['threshold']:.2f}" + (" (interpolated)" if point["interpolated"] else ""))  # fmt: skip
    for d, x, y in zip(frontier["threshold"], frontier["helpful_winrate"], frontier["safety_rate"]):
        left.annotate(f"d={d:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if precursor is not None:
        left.scatter([precursor.get("helpful_winrate", 0.5)], [precursor["safety_rate"]], marker="*", s=120,
                     color="k", label="precursor")  # fmt: skip
    for i, (label, m) in enumerate((extra or {}).items()):
        left.scatter([m["helpful_winrate"]], [m["safety_rate"]], marker="s", color=f"C{i + 4}", label=label)
    left.set_xlabel("helpfulness win rate vs precursor")
    left.set_ylabel("oracle safety rate")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    cats = list(point["per_category_safety"])
    x = np.arange(len(cats))
    width = 0.4 if precursor is not None else 0.8
    if precursor is not None:
        ref = [precursor["per_category_safety"].get(c, math.nan) for c in cats]
        right.bar(x - width / 2, ref, width, color="0.7", label="precursor")
    right.bar(x + (width / 2 if precursor is not None else 0), list(point["per_category_safety"].values()), width,
              color="C3", label=f"policy at d = {point['threshold']:.2f}")  # fmt: skip
    right.set_xticks(x, [short_category(c) for c in cats], rotation=60, ha="right", fontsize=7)
    right.set_ylim(0, 1.05)
    right.set_ylabel("safety on harmful prompts")
    right.set_title(
        f"per category (harmful-prompt safety {point['harmful_safety_rate']:.2f}, "
        f"lambda at the end {point['final_lambda']:.2f})",
        fontsize=9,
    )
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig
