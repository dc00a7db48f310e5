"""The student's-path timer (``saferlhfv.bench.tour``) and the widget timing it reads from nbclient."""

import datetime as dt

import nbformat

from saferlhfv.bench.tour import format_tour
from saferlhfv.figures import _first_widget_seconds

WIDGET = {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "Widget"}


def _cell(outputs, reply):
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = outputs
    cell.metadata["execution"] = {"shell.execute_reply": reply}
    return cell


def test_first_widget_is_the_end_of_the_first_cell_that_displays_one():
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    nb = nbformat.v4.new_notebook()
    text = nbformat.v4.new_output("display_data", data={"text/plain": "42"})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        _cell([text], "2026-01-01T12:00:05.000000Z"),
        _cell([nbformat.v4.new_output("display_data", data=WIDGET)], "2026-01-01T12:01:30.500000Z"),
        _cell([nbformat.v4.new_output("display_data", data=WIDGET)], "2026-01-01T12:02:00.000000Z"),
    ]
    assert _first_widget_seconds(nb, start) == 90.5
    nb.cells = nb.cells[:2]
    assert _first_widget_seconds(nb, start) is None


def test_tour_table_adds_up_each_pass():
    rows = [
        {"notebook": "01_a.ipynb", "cache": "empty", "first_widget_seconds": None, "seconds": 60.0, "error": None},
        {"notebook": "06_b.ipynb", "cache": "empty", "first_widget_seconds": 300.0, "seconds": 600.0, "error": None},
        {"notebook": "01_a.ipynb", "cache": "warm", "first_widget_seconds": None, "seconds": 30.0, "error": None},
        {"notebook": "06_b.ipynb", "cache": "warm", "first_widget_seconds": 6.0, "seconds": 24.0, "error": "E: x\ny"},
    ]
    lines = format_tour(rows).splitlines()
    assert lines[3] == "| empty cache | `06_b.ipynb` | 5.0 min | 10.0 min | 11.0 min |  |"
    assert lines[5] == "| warm cache | `06_b.ipynb` | 0.1 min | 0.4 min | 0.9 min | E: x |"


def test_execution_stops_at_the_first_widget(tmp_path):
    """``stop_at_widget``: the cells after the first widget do not run (here the next one would fail)."""
    from saferlhfv.figures import execute_notebook

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('PRESET = "tiny"\nx = 1'),
        nbformat.v4.new_code_cell("import ipywidgets as W\nW.IntSlider(value=x)"),
        nbformat.v4.new_code_cell("raise RuntimeError('ran past the widget')"),
    ]
    path = tmp_path / "01_w.ipynb"
    nbformat.write(nb, path)
    run = execute_notebook(path, preset="tiny", figures=tmp_path / "figs", timeout=120, stop_at_widget=True)
    assert run.error is None and run.first_widget_seconds is not None and run.first_widget_seconds <= run.seconds
    full = execute_notebook(path, preset="tiny", figures=tmp_path / "figs", timeout=120)
    assert "ran past the widget" in full.error
