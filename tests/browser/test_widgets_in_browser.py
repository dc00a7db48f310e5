"""The widget explorers as a student meets them: JupyterLab 4 in headless Chromium.

Opens notebook 06 (the multiplier and budget explorers) and notebook 04 (the guard's threshold
slider) in a real JupyterLab, runs every cell from the Run menu, moves each explorer's main slider
with the keyboard and checks what the page then shows: the slider's label, the explorer's printed
numbers (moving the way the algorithm says they must) and its figure. No cell may show an error and
JupyterLab's log console (where a widget callback's exception lands) must stay free of tracebacks;
a scratch notebook with a raising callback checks that this detection works. One screenshot per
widget, checked to be non-blank, goes to the test's temporary folder and to ``figures_dir()``
(``browser_*.png``; the README's picture is one of them).

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it); outside CI the test
skips when no Chromium is found. Stages the notebooks need are built through the shared artifact
cache, so with a cold cache the first run waits for them; the browser part takes about a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from saferlhfv.paths import figures_dir, repo_root
from saferlhfv.widgets import STATUS_CLASS
from tests.browser.jupyterlab import (
    JupyterLab,
    find_chromium,
    is_blank,
    log_console_errors,
    open_notebook,
    press_on_slider,
    run_all_cells,
    slider_by_label,
    visible_errors,
)

pytest.importorskip("playwright.sync_api", reason="Playwright is a dev dependency: pip install -e '.[dev]'")

NOTEBOOKS = ("04_guardrail_filtering.ipynb", "06_lambda_budget_explorer.ipynb")
#: seconds allowed for "Run All Cells" of one notebook: as long as nbmake allows a notebook, since a
#: cold cache makes the kernel train what the notebook needs (or wait for another worker doing it)
RUN_ALL_TIMEOUT_S = 2400
UPDATE_TIMEOUT_S = 60


def _chromium_or_skip() -> str:
    path = find_chromium()
    if path is None:
        reason = (
            "no Chromium found: install Debian's package (apt-get install -y chromium) or set SAFERLHFV_CHROMIUM; "
            "Playwright's own browser download cannot work offline"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must have it: .ci/run installs it)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    for name in NOTEBOOKS:
        shutil.copy(repo_root() / "notebooks" / name, root / name)
    _scratch_notebook(root / "raising_callback.ipynb")
    with JupyterLab(root, tmp_path_factory.mktemp("jupyter")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UPDATE_TIMEOUT_S * 1000)
    yield page
    context.close()


def _scratch_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import ipywidgets as W\n"
            "s = W.IntSlider(value=1, description='raises', continuous_update=False)\n"
            "def callback(change):\n"
            "    raise RuntimeError('the callback failed')\n"
            "s.observe(callback, names='value')\n"
            "s"
        )
    ]
    nbformat.write(nb, path)


def _cell(page, source_snippet: str):
    """The code cell whose source contains ``source_snippet``."""
    return page.locator(".jp-CodeCell").filter(has=page.locator(".jp-InputArea", has_text=source_snippet)).first


def _status(cell):
    """The explorer's status line in ``cell``: found by its class, since a cell that trained something
    first (a cold cache) also shows tqdm's progress bars, HTML widgets of their own."""
    return cell.locator(f".{STATUS_CLASS}").first


def _changes(read, before: str, what: str, *, until=None, timeout_s: float = UPDATE_TIMEOUT_S) -> str:
    """Poll ``read()`` until it differs from ``before`` (and satisfies ``until``, if given); return it.

    Fails naming ``what`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    now = before
    while time.monotonic() < deadline:
        now = read()
        if now != before and (until is None or until(now)):
            return now
        time.sleep(0.2)
    raise AssertionError(f"{what} shows {now[:200]!r} {timeout_s:.0f} s after the slider moved")


def _text_changes(locator, before: str, *, until=None) -> str:
    return _changes(locator.inner_text, before, "the text", until=until)


def _settled(locator, before: str, *, quiet_s: float = 2.0) -> str:
    """The text once it changed from ``before`` and then stayed the same for ``quiet_s`` (key presses queue
    one recomputation each: the first change is not the last)."""
    now = _text_changes(locator, before)
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.2)
        latest = locator.inner_text()
        if latest != now:
            now, stable_since = latest, time.monotonic()
    return now


def _figure_changes(cell, before: str) -> str:
    return _changes(lambda: _figure_src(cell), before, "the figure")


def _readout(slider) -> float:
    """The number a slider's label shows (ipywidgets writes a minus sign as U+2212)."""
    return float(slider.locator(".widget-readout").inner_text().replace("\u2212", "-"))


def _figure_src(cell) -> str:
    img = cell.locator(".jp-OutputArea-output img").last
    return img.get_attribute("src") or ""


def _shoot(locator, name: str, tmp_path: Path) -> Path:
    png = tmp_path / f"{name}.png"
    locator.screenshot(path=str(png))
    assert not is_blank(png), f"{name}: the screenshot is blank"
    out = figures_dir() / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, out)
    return png


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not found in {text!r}"
    return float(m.group(1))


def _no_errors(page) -> None:
    assert visible_errors(page) == [], "a cell shows an error:\n" + "\n---\n".join(visible_errors(page))
    errors = log_console_errors(page)
    assert errors == [], "a widget callback raised (JupyterLab's log console):\n" + "\n---\n".join(errors)


def test_a_raising_callback_is_detected(lab, page):
    """The error detection itself: a slider whose callback raises is caught (else the tests below prove nothing)."""
    open_notebook(page, lab, "raising_callback.ipynb")
    run_all_cells(page, timeout_s=120)
    assert visible_errors(page) == [] and log_console_errors(page) == []
    press_on_slider(slider_by_label(page, "raises"), "ArrowRight")
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    while not (errors := log_console_errors(page)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert errors and "the callback failed" in errors[0]


def test_multiplier_and_budget_explorers(lab, page, tmp_path):
    open_notebook(page, lab, "06_lambda_budget_explorer.ipynb")
    seconds = run_all_cells(page, timeout_s=RUN_ALL_TIMEOUT_S)
    print(f"06: all cells ran in {seconds:.0f} s")
    assert visible_errors(page) == [], visible_errors(page)

    # the dual-dynamics explorer: budget d and lambda_lr
    dual = _cell(page, "DualDynamicsExplorer(table")
    dual.scroll_into_view_if_needed()
    status = _status(dual)
    _shoot(dual.locator(".jp-OutputArea").first, "browser_06_dual_explorer", tmp_path)
    budget = slider_by_label(dual, "budget d")
    d0 = _readout(budget)
    text0, fig0 = status.inner_text(), _figure_src(dual)
    lam0 = _number(r"stationary lambda\* for this budget: ([0-9.e+-]+)", text0)
    press_on_slider(budget, "ArrowRight", 10)  # 10 steps of 0.01
    text1 = _settled(status, text0)
    d1 = _readout(budget)
    assert d1 == pytest.approx(d0 + 0.10, abs=0.011)
    lam1 = _number(r"stationary lambda\* for this budget: ([0-9.e+-]+)|budget out of reach", text1 + " 0")
    assert lam1 <= lam0, f"a looser budget must not need a larger multiplier: lambda* {lam0} -> {lam1}"
    fig1 = _figure_changes(dual, fig0)

    rate = slider_by_label(dual, "lambda_lr")
    press_on_slider(rate, "End")
    text2 = _text_changes(status, text1)
    assert _readout(rate) == pytest.approx(10**0.5, rel=0.01)
    # the largest step size makes the multiplier swing (notebook 06, section 3: oscillation)
    swing = r"lambda range ([0-9.e+-]+)"
    assert _number(swing, text2) > _number(swing, text1), (text1, text2)
    _figure_changes(dual, fig1)
    _shoot(dual.locator(".jp-OutputArea").first, "browser_06_dual_explorer_moved", tmp_path)

    # the trade-off explorer: the budget slider walks the trained frontier
    trade = _cell(page, "TradeoffExplorer(runs")
    trade.scroll_into_view_if_needed()
    status = _status(trade)
    budget = slider_by_label(trade, "budget d")
    before, d_before, fig_before = status.inner_text(), _readout(budget), _figure_src(trade)
    press_on_slider(budget, "End")  # the loosest trained budget (the notebook left it at the tightest)
    d_max = _readout(budget)
    assert d_max > d_before
    after = _text_changes(status, before, until=lambda text: text.startswith(f"d = {d_max:.2f} "))
    assert "(a trained run)" in after, after
    _figure_changes(trade, fig_before)
    _shoot(trade.locator(".jp-OutputArea").first, "browser_06_tradeoff_explorer", tmp_path)
    _no_errors(page)


def test_guard_threshold_slider(lab, page, tmp_path):
    open_notebook(page, lab, "04_guardrail_filtering.ipynb")
    seconds = run_all_cells(page, timeout_s=RUN_ALL_TIMEOUT_S)
    print(f"04: all cells ran in {seconds:.0f} s")
    assert visible_errors(page) == [], visible_errors(page)
    cell = _cell(page, "ThresholdExplorer(output_table")
    cell.scroll_into_view_if_needed()
    slider = slider_by_label(cell, "threshold")
    status = _status(cell)
    t0, text0, fig0 = _readout(slider), status.inner_text(), _figure_src(cell)
    press_on_slider(slider, "ArrowRight", 4)  # 4 steps of 0.05
    t1 = _readout(slider)
    assert t1 == pytest.approx(t0 + 0.20, abs=1e-6)
    text1 = _text_changes(status, text0, until=lambda text: text.startswith(f"threshold {t1:.2f}:"))
    # a higher threshold flags fewer answers: detection and over-blocking can only fall
    for metric in ("recall", "false-positive rate"):
        pattern = rf"{metric} ([0-9.]+)"
        assert _number(pattern, text1) <= _number(pattern, text0), (metric, text0, text1)
    _figure_changes(cell, fig0)
    _shoot(cell.locator(".jp-OutputArea").first, "browser_04_threshold_slider", tmp_path)
    _no_errors(page)
