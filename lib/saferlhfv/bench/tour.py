"""The student's path, timed: the first notebook, then the widget notebook, from an empty cache and again warm.

``python -m saferlhfv.bench.tour`` runs ``--notebooks`` (default ``01`` then ``06``, the widget
explorers) one after the other in fresh kernels, first on an empty artifact cache (a new temporary
folder, so every stage they need trains, as after a fresh clone), then again on the cache they left
(warm). For each notebook it prints the seconds until the first widget is on screen and interactive
(the end of the first cell that displays one) and until the last cell has run. Figures go to a
temporary folder; the notebooks are never written back.

Run it on a quiet machine: the numbers are wall time on whatever cores are free (the README quotes
them for the 2-core development machine with nothing else running). The install time
(``.ci/run`` prints it as ``install: N s``) is not part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from saferlhfv.figures import execute_notebook, find_notebooks

DEFAULT_NOTEBOOKS = ("01", "06")


def run_tour(
    *, notebooks: tuple[str, ...] = DEFAULT_NOTEBOOKS, preset: str = "tiny", artifacts: str | Path | None = None,
    warm_only: bool = False, timeout: int = 3600,
) -> list[dict[str, Any]]:  # fmt: skip
    """Time the notebooks in order, cold then warm.

    Args:
        notebooks: name prefixes, run in this order (each in its own kernel).
        preset: the preset the notebooks run on.
        artifacts: the cache folder; default a new empty temporary one (the cold start).
        warm_only: skip the cold pass (``artifacts`` should then hold a filled cache).
        timeout: seconds allowed for one cell.

    Returns:
        One row per (pass, notebook): ``notebook``, ``cache`` (``"empty"`` / ``"warm"``),
        ``first_widget_seconds`` (None when the notebook shows no widget), ``seconds``, ``error``.
    """
    paths = [p for prefix in notebooks for p in find_notebooks(only=[prefix])]
    if not paths:
        raise ValueError(f"no notebook starts with {notebooks}")
    cache = Path(artifacts) if artifacts else Path(tempfile.mkdtemp(prefix="saferlhfv-tour-cache-"))
    figures = Path(tempfile.mkdtemp(prefix="saferlhfv-tour-figures-"))
    saved = os.environ.get("SAFERLHFV_ARTIFACTS")
    os.environ["SAFERLHFV_ARTIFACTS"] = str(cache)
    rows = []
    try:
        for label in ("warm",) if warm_only else ("empty", "warm"):
            for path in paths:
                print(f"[tour] {path.name}, {label} cache ({cache}) ...", flush=True)
                run = execute_notebook(path, preset=preset, figures=figures, timeout=timeout)
                rows.append(
                    {
                        "notebook": run.notebook,
                        "cache": label,
                        "first_widget_seconds": run.first_widget_seconds,
                        "seconds": run.seconds,
                        "error": run.error,
                    }
                )
                print(f"[tour] {run.notebook}: {run.seconds:.0f} s" + (f" ERROR {run.error}" if run.error else ""))
    finally:
        if saved is None:
            os.environ.pop("SAFERLHFV_ARTIFACTS", None)
        else:
            os.environ["SAFERLHFV_ARTIFACTS"] = saved
    return rows


def format_tour(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_tour`'s rows; ``pass so far`` adds up the notebooks of a pass in order."""

    def minutes(s: float | None) -> str:
        return "-" if s is None else f"{s / 60:.1f} min"

    lines = [
        "| pass | notebook | first widget interactive | whole notebook | pass so far | error |",
        "|---|---|---|---|---|---|",
    ]
    so_far: dict[str, float] = {}
    for r in rows:
        so_far[r["cache"]] = so_far.get(r["cache"], 0.0) + r["seconds"]
        error = r["error"].splitlines()[0] if r["error"] else ""
        lines.append(
            f"| {r['cache']} cache | `{r['notebook']}` | {minutes(r['first_widget_seconds'])} | "
            f"{minutes(r['seconds'])} | {minutes(so_far[r['cache']])} | {error} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench.tour", description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", nargs="+", default=list(DEFAULT_NOTEBOOKS), metavar="PREFIX")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--artifacts", help="cache folder (default: a new empty temporary one)")
    parser.add_argument("--warm-only", action="store_true", help="skip the empty-cache pass")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run_tour(
        notebooks=tuple(args.notebooks), preset=args.preset, artifacts=args.artifacts, warm_only=args.warm_only
    )
    print(json.dumps(rows, indent=1) if args.json else format_tour(rows))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
