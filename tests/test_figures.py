"""`python -m saferlhfv.figures` on fake notebooks, the figure index, and that the test command runs every notebook."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib

from saferlhfv.figures import (
    INDEX,
    figure_names,
    find_notebooks,
    main,
    read_index,
    set_preset,
    write_index,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


FAKE = [
    'PRESET = "tiny"  # the parameters cell',
    "import os\nfrom matplotlib.figure import Figure\nfrom saferlhfv.plotting import save_figure\n%matplotlib inline",
    'fig = Figure()\nfig.subplots().plot([0, 1], [1, 0])\nfig.suptitle(PRESET)\nsave_figure(fig, "01_fake_line")\n'
    'open(os.path.join(os.environ["SAFERLHFV_FIGURES"], "preset.txt"), "w").write(PRESET)',
]


def test_set_preset_and_figure_names(tmp_path):
    path = _notebook(tmp_path / "01_fake.ipynb", [*FAKE, 'for n in ("a", "b"):\n    save_figure(fig, f"01_x_{n}")'])
    nb = nbformat.read(path, as_version=4)
    assert set_preset(nb, "small") and nb.cells[0].source.startswith('PRESET = "small"  # the parameters cell')
    assert not set_preset(nbformat.v4.new_notebook(), "small")
    assert figure_names(path) == ["01_fake_line", "01_x_*"]


def test_figures_command_executes_notebooks_and_writes_the_index(tmp_path):
    nbs, figs = tmp_path / "notebooks", tmp_path / "figures"
    nbs.mkdir()
    path = _notebook(nbs / "01_fake.ipynb", FAKE)
    _notebook(nbs / "03_other.ipynb", ['PRESET = "tiny"', "from saferlhfv.plotting import save_figure\nx = 1"])
    before = path.read_text()
    code = main(["--preset", "small", "--notebooks-dir", str(nbs), "--figures-dir", str(figs), "--timeout", "120"])
    assert code == 0
    assert (figs / "01_fake_line.png").is_file()
    assert (figs / "preset.txt").read_text() == "small"  # the parameters cell was switched
    assert path.read_text() == before  # the notebook is never written back
    index = read_index(figs / INDEX)
    assert index["01_fake_line"]["notebook"] == "01_fake.ipynb" and index["01_fake_line"]["preset"] == "small"
    assert len(index["01_fake_line"]["date"]) == 10

    # only one notebook: the other rows stay; a figure that a notebook names but that is missing is listed
    _notebook(nbs / "03_other.ipynb", ['PRESET = "tiny"', 'save_figure(fig, "03_missing")'])
    assert main(["--index-only", "--notebooks-dir", str(nbs), "--figures-dir", str(figs)]) == 0
    index = read_index(figs / INDEX)
    assert index["01_fake_line"]["preset"] == "small" and index["03_missing"]["date"] == "not generated"


def test_a_failing_notebook_is_reported_and_the_command_fails(tmp_path, capsys):
    nbs, figs = tmp_path / "notebooks", tmp_path / "figures"
    nbs.mkdir()
    _notebook(nbs / "01_broken.ipynb", ['PRESET = "tiny"', 'raise RuntimeError("callback broke")'])
    assert main(["--notebooks-dir", str(nbs), "--figures-dir", str(figs), "--timeout", "120"]) == 1
    assert "callback broke" in capsys.readouterr().out


def test_write_index_keeps_old_rows(tmp_path):
    nbs, figs = tmp_path / "nb", tmp_path / "figs"
    nbs.mkdir()
    figs.mkdir()
    _notebook(nbs / "04_a.ipynb", ['save_figure(fig, "04_one")\nsave_figure(fig, name="ignored")'])
    (figs / "04_one.png").write_bytes(b"png")
    (figs / INDEX).write_text("| figure | notebook | preset | date |\n|---|---|---|---|\n"
                              "| [`04_one`](04_one.png) | `04_a.ipynb` | tiny | 2024-01-02 |\n")  # fmt: skip
    write_index(figs, find_notebooks(nbs), preset="tiny")
    assert read_index(figs / INDEX) == {"04_one": {"notebook": "04_a.ipynb", "preset": "tiny", "date": "2024-01-02"}}


# --------------------------------------------------------------------------- the repository's own notebooks


def test_every_saved_figure_is_in_the_figures_index():
    index = read_index(ROOT / "figures" / INDEX)
    missing = []
    for nb in find_notebooks(NOTEBOOKS):
        for name in figure_names(nb):
            if "*" in name:
                hit = any(Path(k).match(name) for k in index)
            else:
                hit = name in index and index[name]["notebook"] == nb.name
            if not hit:
                missing.append(f"{nb.name}: {name}")
    assert not missing, (
        f"figures not in figures/README.md: {missing}; run `python -m saferlhfv.figures --preset tiny` "
        "(or `--index-only` to list them before regenerating)"
    )


def test_the_test_command_runs_every_notebook():
    """The README's `python -m pytest --nbmake` collects every notebook of notebooks/."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "notebooks" in config["testpaths"]
    notebooks = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbmake", "-p", "no:cacheprovider", "notebooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    collected = {Path(line.split("::")[0]).name for line in out.stdout.splitlines() if ".ipynb" in line}
    assert collected == set(notebooks), f"not collected: {set(notebooks) - collected}"
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest --nbmake" in readme


def test_notebooks_are_committed_without_outputs():
    for nb in find_notebooks(NOTEBOOKS):
        data = json.loads(nb.read_text())
        dirty = [i for i, c in enumerate(data["cells"]) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{nb.name} has outputs in cells {dirty}: clear them (nbstripout)"


@pytest.mark.parametrize("name", ["06_lambda_budget_explorer.ipynb"])
def test_explorer_notebook_asserts_after_each_widget(name):
    """Each widget cell is followed by a cell that asserts the widget produced its result."""
    cells = [c for c in json.loads((NOTEBOOKS / name).read_text())["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in cells]
    widget_cells = [i for i, s in enumerate(sources) if "Explorer(" in s]
    assert len(widget_cells) == 3
    for i in widget_cells:
        assert "assert" in sources[i + 1] and ".result" in sources[i + 1] and ".error" in sources[i + 1]
