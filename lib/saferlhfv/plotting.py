"""Figures: one helper that every notebook uses to save what it shows."""

from __future__ import annotations

from pathlib import Path

from saferlhfv.paths import figures_dir

__all__ = ["save_figure", "read_metrics", "plot_learning_curves"]


def save_figure(fig, name: str, *, formats: tuple[str, ...] = ("png",), dpi: int = 120) -> list[Path]:
    """Save a matplotlib figure into ``figures/`` (or ``$SAFERLHFV_FIGURES``).

    Args:
        fig: a ``matplotlib.figure.Figure``.
        name: file stem, by convention ``<notebook number>_<what>``, e.g. ``"04_lambda_trajectory"``.
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


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` written by a trainer (one dict per line)."""
    import json

    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
