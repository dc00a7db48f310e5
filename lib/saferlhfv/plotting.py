"""Figures: one helper that every notebook uses to save what it shows."""

from __future__ import annotations

from pathlib import Path

from saferlhfv.paths import figures_dir

__all__ = ["save_figure"]


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
