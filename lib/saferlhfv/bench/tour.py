"""The student's path, timed: the first notebook, then the widget notebook, from an empty cache and again warm.

``python -m saferlhfv.bench.tour`` runs ``--notebooks`` (default ``01`` then ``06``, the widget
explorers) one after the other in fresh kernels, first on an empty artifact cache (a new temporary
folder, so every stage they need trains, as after a fresh clone), then again on the project's
artifact cache (warm: it should hold what the notebooks need, e.g. after the test command or after
running them once; a stage missing there would be trained and counted). For each notebook it
prints the seconds until the first widget is on screen and interactive (the end of the first cell
that displays one) and until the last cell has run. In the empty-cache pass the last notebook stops
at its first widget (the moment the student can play; ``--full-cold`` runs it to the end, which
also trains what its later cells need). Figures go to a temporary folder; the notebooks are never
written back.

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
from saferlhfv.paths import artifacts_dir

DEFAULT_NOTEBOOKS = ("01", "06")


def run_tour(
    *, notebooks: tuple[str, ...] = DEFAULT_NOTEBOOKS, preset: str = "tiny", warm_artifacts: str | Path | None = None,
    warm_only: bool = False, full_cold: bool = False, timeout: int = 3600,
) -> list[dict[str, Any]]:  # fmt: skip
    """Time the notebooks in order, cold then warm.

    Args:
        notebooks: name prefixes, run in this order (each in its own kernel).
        preset: the preset the notebooks run on.
        warm_artifacts: the filled cache of the warm pass (default: the project's, ``artifacts_dir()``); the
            cold pass always starts from a new empty temporary folder.
        warm_only: skip the cold pass.
        full_cold: in the cold pass, run the last notebook to its end too (default: to its first widget).
        timeout: seconds allowed for one cell.

    Returns:
        One row per (pass, notebook): ``notebook``, ``cache`` (``"empty"`` / ``"warm"``),
        ``first_widget_seconds`` (None when the notebook shows no widget), ``seconds``, ``stopped_at_widget``,
        ``error``.
    """
    paths = [p for prefix in notebooks for p in find_notebooks(only=[prefix])]
    if not paths:
        raise ValueError(f"no notebook starts with {notebooks}")
    caches = {"empty": Path(tempfile.mkdtemp(prefix="saferlhfv-tour-cache-")),
              "warm": Path(warm_artifacts) if warm_artifacts else artifacts_dir()}  # fmt: skip
    figures = Path(tempfile.mkdtemp(prefix="saferlhfv-tour-figures-"))
    saved = os.environ.get("SAFERLHFV_ARTIFACTS")
    rows = []
    try:
        for label in ("warm",) if warm_only else ("empty", "warm"):
            cache = caches[label]
            os.environ["SAFERLHFV_ARTIFACTS"] = str(cache)
            for path in paths:
                stop = label == "empty" and path == paths[-1] and not full_cold
                print(f"[tour] {path.name}, {label} cache ({cache}){', to its first widget' if stop else ''} ...")
                run = execute_notebook(path, preset=preset, figures=figures, timeout=timeout, stop_at_widget=stop)
                rows.append(
                    {
                        "notebook": run.notebook,
                        "cache": label,
                        "first_widget_seconds": run.first_widget_seconds,
                        "seconds": run.seconds,
                        "stopped_at_widget": stop,
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
            f"{minutes(r['seconds'])}{' (stopped there)' if r.get('stopped_at_widget') else ''} | "
            f"{minutes(so_far[r['cache']])} | {error} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench.tour", description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", nargs="+", default=list(DEFAULT_NOTEBOOKS), metavar="PREFIX")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--warm-artifacts", help="the filled cache of the warm pass (default: the project's)")
    parser.add_argument("--warm-only", action="store_true", help="skip the empty-cache pass")
    parser.add_argument("--full-cold", action="store_true", help="empty-cache pass: run the last notebook to its end")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run_tour(
        notebooks=tuple(args.notebooks), preset=args.preset, warm_artifacts=args.warm_artifacts,
        warm_only=args.warm_only, full_cold=args.full_cold,
    )  # fmt: skip
    print(json.dumps(rows, indent=1) if args.json else format_tour(rows))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
