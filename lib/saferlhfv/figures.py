"""Regenerate every figure: ``python -m saferlhfv.figures --preset tiny``.

Executes each notebook of ``notebooks/`` in its own kernel (nbclient), with the
parameters cell's ``PRESET = "..."`` set to the requested preset and figures
written into ``figures/`` (``$SAFERLHFV_FIGURES``), then rewrites
``figures/README.md``: one row per figure with the notebook that makes it, the
preset it was made on and the date. The notebooks themselves are never written
back (they stay committed without outputs).

Options: ``--notebooks 05 06`` runs only notebooks whose name starts with those
prefixes (the other rows of the index are kept); ``--index-only`` executes
nothing and refreshes the index from the notebooks' ``save_figure`` calls and the
files present (figures a notebook names but that are missing are listed as *not
generated*); ``--timeout`` bounds each cell.

The committed figures are the tiny preset's. A notebook that fails is reported
(its error's last lines) and the command exits non-zero after running the rest.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhfv.paths import figures_dir

__all__ = [
    "INDEX",
    "NotebookRun",
    "find_notebooks",
    "set_preset",
    "figure_names",
    "execute_notebook",
    "read_index",
    "write_index",
    "refresh_figures",
    "main",
]

INDEX = "README.md"
#: ``save_figure(fig, "name")`` / ``save_figure(fig, f"name_{x}")`` in notebook code.
_SAVE_RE = re.compile(r"save_figure\(\s*[^,()]+(?:\([^()]*\))?\s*,\s*(f?)([\"'])(.+?)\2")
_PRESET_RE = re.compile(r"^(\s*PRESET\s*=\s*)([\"'])[^\"']*\2", re.MULTILINE)
_FIG_EXT = (".png", ".svg", ".pdf")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _repo_root() -> Path:
    from saferlhfv.paths import repo_root

    return repo_root()


def find_notebooks(folder: str | Path | None = None, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks of ``folder`` (default ``<repo>/notebooks``), sorted; ``only``: name prefixes."""
    folder = Path(folder) if folder is not None else _repo_root() / "notebooks"
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) or p.stem == o for o in only)]
    return paths


def set_preset(nb, preset: str) -> bool:
    """Set ``PRESET = "<preset>"`` in the notebook's first code cell that assigns it (in place).

    Returns:
        Whether a parameters cell was found.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if _PRESET_RE.search(src):
            cell.source = _PRESET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{preset}{m.group(2)}", src, count=1)
            return True
    return False


def figure_names(notebook: str | Path) -> list[str]:
    """The figure names a notebook passes to ``save_figure`` (f-string fields become ``*``), in order."""
    data = json.loads(Path(notebook).read_text())
    names: list[str] = []
    for cell in data.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for is_f, _, name in _SAVE_RE.findall(src):
            if is_f:
                name = re.sub(r"\{[^}]*\}", "*", name)
            if name not in names:
                names.append(name)
    return names


@dataclass
class NotebookRun:
    """What executing one notebook did."""

    notebook: str
    seconds: float
    figures: list[str] = field(default_factory=list)
    error: str | None = None
    #: seconds from the start until the first cell that shows a widget had run (None: no widget shown)
    first_widget_seconds: float | None = None


_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _shows_widget(cell) -> bool:
    return cell.cell_type == "code" and any(_WIDGET_MIME in o.get("data", {}) for o in cell.get("outputs", []))


def _first_widget_seconds(nb, started: _dt.datetime) -> float | None:
    """Seconds from ``started`` to the end of the first cell whose outputs show a widget (nbclient's timing)."""
    for cell in nb.cells:
        if not _shows_widget(cell):
            continue
        done = cell.get("metadata", {}).get("execution", {}).get("shell.execute_reply")
        if done is None:
            return None
        return round((_dt.datetime.fromisoformat(done.replace("Z", "+00:00")) - started).total_seconds(), 1)
    return None


def _snapshot(folder: Path) -> dict[str, float]:
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_mtime for p in folder.iterdir() if p.suffix in _FIG_EXT}


def execute_notebook(
    path: str | Path, *, preset: str, figures: str | Path, timeout: int = 1800, stop_at_widget: bool = False
) -> NotebookRun:
    """Run one notebook top to bottom on ``preset`` with figures saved into ``figures``; never writes it back.

    ``stop_at_widget``: stop after the first cell that shows a widget (when the student can first play).
    """
    import nbformat
    from nbclient import NotebookClient

    path, figures = Path(path), Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    if not set_preset(nb, preset) and preset != "tiny":
        print(f"  note: {path.name} has no PRESET parameter; it runs as written", flush=True)
    before = _snapshot(figures)
    saved_env = {k: os.environ.get(k) for k in ("SAFERLHFV_FIGURES", "MPLBACKEND")}
    os.environ["SAFERLHFV_FIGURES"] = str(figures.resolve())
    os.environ.pop("MPLBACKEND", None)  # the notebooks choose the inline backend themselves
    start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    error = None
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        if stop_at_widget:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                    if _shows_widget(cell):
                        break
        else:
            client.execute()
    except Exception as err:  # CellExecutionError, DeadKernelError, timeouts: report, go on
        lines = [ln for ln in _ANSI.sub("", str(err)).strip().splitlines() if ln.strip()]
        head = lines[:4] if len(lines) > 12 else []  # nbclient puts the failing cell's source first
        error = f"{type(err).__name__}: " + "\n".join(head + (["..."] if head else []) + lines[-8:])
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    after = _snapshot(figures)
    written = sorted(Path(n).stem for n, t in after.items() if before.get(n) != t)
    seconds = round(time.perf_counter() - start, 1)
    return NotebookRun(path.name, seconds, sorted(set(written)), error, _first_widget_seconds(nb, started))


#: a row of the index: | [`name`](name.png) or `name` | `notebook` | preset | date |
_ROW_RE = re.compile(r"^\|\s*\[?`([^`]+)`\]?(?:\([^)]*\))?\s*\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|")


def read_index(path: str | Path) -> dict[str, dict[str, str]]:
    """Rows of an existing ``figures/README.md``: ``{figure: {"notebook", "preset", "date"}}``."""
    path = Path(path)
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        m = _ROW_RE.match(line)
        if not m:
            continue
        rows[m.group(1).strip()] = {"notebook": m.group(2).strip(), "preset": m.group(3), "date": m.group(4)}
    return rows


def _file_for(figures: Path, name: str) -> Path | None:
    for ext in _FIG_EXT:
        p = figures / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def write_index(
    figures: str | Path,
    notebooks: list[Path],
    *,
    preset: str,
    runs: dict[str, NotebookRun] | None = None,
    today: str | None = None,
) -> Path:
    """Rewrite ``figures/README.md`` from the notebooks' figure names, the files present and this run.

    A figure made in this run gets today's date and ``preset``; one made before keeps its row (or,
    without one, gets the file's modification date and the preset ``?``); one that a notebook names
    but that does not exist is listed as *not generated*. Figures whose notebook no longer names
    them (and that nothing produced now) are dropped from the index.
    """
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    today = today or _dt.date.today().isoformat()
    old = read_index(figures / INDEX)
    runs = runs or {}
    rows: list[tuple[str, str, str, str]] = []
    for nb in notebooks:
        run = runs.get(nb.name)
        names = list(figure_names(nb))
        for made in run.figures if run else []:
            if made not in names and not any(_glob_match(n, made) for n in names):
                names.append(made)
        expanded: list[str] = []
        for name in names:
            if "*" in name:  # an f-string name: every file that matches it
                hits = sorted(p.stem for p in figures.glob(name + ".*") if p.suffix in _FIG_EXT)
                expanded += hits or [name]
            else:
                expanded.append(name)
        for name in dict.fromkeys(expanded):
            if run and name in run.figures:
                rows.append((name, nb.name, preset, today))
                continue
            file = _file_for(figures, name)
            if file is None:
                rows.append((name, nb.name, "-", "not generated"))
            elif name in old:
                rows.append((name, nb.name, old[name]["preset"], old[name]["date"]))
            else:
                mdate = _dt.date.fromtimestamp(file.stat().st_mtime).isoformat()
                rows.append((name, nb.name, "?", mdate))
    lines = [
        "# Figures",
        "",
        "Every figure the notebooks save (`saferlhfv.plotting.save_figure`), regenerated by",
        "`python -m saferlhfv.figures --preset tiny` (which executes every notebook; `--index-only`",
        "refreshes this index without running them). The committed figures are the tiny preset's.",
        "",
        "| figure | notebook | preset | date |",
        "|---|---|---|---|",
    ]
    for name, nb, pre, date in rows:
        file = _file_for(figures, name)
        shown = f"[`{name}`]({file.name})" if file is not None else f"`{name}`"
        lines.append(f"| {shown} | `{nb}` | {pre} | {date} |")
    path = figures / INDEX
    path.write_text("\n".join(lines) + "\n")
    return path


def _glob_match(pattern: str, name: str) -> bool:
    import fnmatch

    return "*" in pattern and fnmatch.fnmatchcase(name, pattern)


def refresh_figures(
    preset: str = "tiny",
    *,
    notebooks_dir: str | Path | None = None,
    figures: str | Path | None = None,
    only: list[str] | None = None,
    timeout: int = 1800,
    execute: bool = True,
) -> dict[str, Any]:
    """Execute the notebooks (unless ``execute=False``) and rewrite the index.

    Returns:
        ``{"runs": [NotebookRun...], "index": path, "failed": [names]}``.
    """
    figures = Path(figures) if figures is not None else figures_dir()
    all_nbs = find_notebooks(notebooks_dir)
    chosen = find_notebooks(notebooks_dir, only) if only else all_nbs
    if only and not chosen:
        raise SystemExit(f"no notebook matches {only} in {notebooks_dir or 'notebooks/'}")
    runs: dict[str, NotebookRun] = {}
    if execute:
        for i, nb in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {nb.name} ...", flush=True)
            run = execute_notebook(nb, preset=preset, figures=figures, timeout=timeout)
            runs[nb.name] = run
            state = "FAILED" if run.error else "ok"
            print(f"[{i}/{len(chosen)}] {nb.name} {state} in {run.seconds:.0f} s; figures: {run.figures}", flush=True)
            if run.error:
                print("    " + run.error.replace("\n", "\n    "), flush=True)
    index = write_index(figures, all_nbs, preset=preset, runs=runs)
    return {"runs": list(runs.values()), "index": index, "failed": [r.notebook for r in runs.values() if r.error]}


def main(argv: list[str] | None = None) -> int:
    from saferlhfv.config import PRESETS

    parser = argparse.ArgumentParser(prog="python -m saferlhfv.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help=f"preset the notebooks run on ({', '.join(PRESETS)})")
    parser.add_argument("--notebooks", nargs="+", metavar="PREFIX", help="only notebooks whose name starts so")
    parser.add_argument("--notebooks-dir", help="folder of the notebooks (default: <repo>/notebooks)")
    parser.add_argument("--figures-dir", help="where figures go (default: figures/ or $SAFERLHFV_FIGURES)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--index-only", action="store_true", help="rewrite figures/README.md without executing")
    args = parser.parse_args(argv)
    out = refresh_figures(
        args.preset,
        notebooks_dir=args.notebooks_dir,
        figures=args.figures_dir,
        only=args.notebooks,
        timeout=args.timeout,
        execute=not args.index_only,
    )
    print(f"index written to {out['index']}")
    if out["failed"]:
        print(f"failed: {', '.join(out['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
