"""Test-wide settings: figures and artifacts go to a temporary folder, never the repo.

At the repository root so that it also applies when only notebooks are collected.

Set at import so notebook kernels started by nbmake, and pytest-xdist workers (one shared artifact
cache), inherit them too.
"""

import os
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="saferlhfv-tests-")
os.environ.setdefault("SAFERLHFV_FIGURES", os.path.join(_TMP, "figures"))
os.environ.setdefault("SAFERLHFV_ARTIFACTS", os.path.join(_TMP, "artifacts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker more than the cores this process may use.

    Workers wait for each other: a notebook that needs a stage another worker's kernel is building
    computes nothing until it is there, and the last notebook of a run (the PPO method comparison
    trains six runs) can go on alone for minutes. With one worker per core each such wait leaves the
    core to the builder's second thread, which does much less than a second job: ``python -m
    saferlhfv.bench --parts concurrent`` measured three jobs on 2 cores at 1.92x one job alone and two
    at 1.69x. The thread policy gives every busy worker ``max(1, cores // busy)`` threads, so the extra
    worker does not oversubscribe the cores."""
    from saferlhfv.threads import available_cores

    return available_cores() + 1


#: files whose items run after the others in the test command, in this order. pytest-xdist's work stealing
#: takes tests from the end of a worker's queue, so an idle worker starts on these: the guard and the
#: monitor need only SFT and can train beside the PPO stages, and the PPO method comparison (18 runs, the
#: longest item) starts before ShiftDC and the safety neurons (one stage each on top of notebook 05's
#: PPO runs). A worker always holds the item after the one it runs, and stealing never takes that one:
#: whatever follows the method comparison on its worker waits until the comparison ends (notebook 09
#: waited 105 s there, alone at the end of the run). The checks of the notebooks' text (49 items of a few
#: milliseconds) therefore follow it, so that the notebooks after them can be stolen by an idle worker.
COLLECT_LAST = (
    "04_guardrail_filtering.ipynb",
    "08_streaming_moderation.ipynb",
    "07_rectified_and_group_methods.ipynb",
    "test_notebook_text.py",
    "09_modality_shift.ipynb",
    "10_safety_neurons.ipynb",
)


def pytest_collection_modifyitems(session, config, items) -> None:
    """Move the items of :data:`COLLECT_LAST`'s files to the end of the collection, in that order (the rest,
    and the items of one file, keep their order)."""
    rank = {name: i for i, name in enumerate(COLLECT_LAST)}
    items.sort(key=lambda item: rank.get(item.path.name, -1))


def _computes_in_this_process(item) -> bool:
    """A test whose work runs in the pytest process itself: a unit or integration test.

    Not a notebook (nbmake runs it in a kernel, which shares the cores by itself), not the browser
    test (its kernel does the work while the test waits), and not the thread policy's own tests
    (they count the busy workers of a private folder)."""
    path = str(item.path)
    return not (path.endswith(".ipynb") or "/tests/browser/" in path or path.endswith("test_threads.py"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Run each computing test as a busy worker of :mod:`saferlhfv.threads`.

    Under ``pytest -n 2`` one worker runs unit tests while the other's notebook kernel trains a
    stage. A kernel that does not see the tests computing keeps both cores' threads, and two
    processes with more threads than cores crawl (``python -m saferlhfv.bench --parts concurrent``:
    two jobs together 0.34x the throughput of one alone without the thread policy, 1.69x with it);
    registered, each takes its share."""
    if not _computes_in_this_process(item):
        yield
        return
    from saferlhfv.threads import busy

    with busy():
        yield
