"""The thread policy (saferlhfv.threads) and the cache's visible wait (saferlhfv.artifacts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from saferlhfv import threads


@pytest.fixture
def policy(monkeypatch, tmp_path):
    """A private workers folder, no user setting in the environment, 4 cores; torch threads restored after."""
    monkeypatch.setenv("SAFERLHFV_WORKERS_DIR", str(tmp_path / "workers"))
    for name in (*threads.USER_VARIABLES, "SAFERLHFV_THREAD_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "_ours", None)
    monkeypatch.setattr(threads, "_user_took_over", False)
    monkeypatch.setattr(threads, "_last_check", -float("inf"))
    before = torch.get_num_threads()
    yield tmp_path / "workers"
    torch.set_num_threads(before)


def _other_worker(folder):
    """A live process registered as a busy worker (a sleeping child)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / str(child.pid)).touch()
    return child


@pytest.mark.parametrize(("cores", "workers", "expected"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (8, 0, 8)])
def test_threads_for_shares_the_cores(cores, workers, expected):
    assert threads.threads_for(cores, workers) == expected


def test_threads_for_needs_a_core():
    with pytest.raises(ValueError, match="cores"):
        threads.threads_for(0, 1)


def test_live_workers_counts_the_living_and_removes_the_dead(policy):
    policy.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (policy / str(dead.pid)).touch()
    alive = _other_worker(policy)
    try:
        assert threads.live_workers() == 1
        assert not (policy / str(dead.pid)).exists()
        with threads.busy():
            assert threads.live_workers() == 2
        assert threads.live_workers() == 1  # leaving busy() unregisters
    finally:
        alive.kill()
        alive.wait()


def test_a_second_busy_job_halves_the_threads_and_leaving_restores_them(policy):
    policy.mkdir(parents=True, exist_ok=True)
    with threads.busy() as alone:
        assert alone == torch.get_num_threads() == 4
        other = _other_worker(policy)
        assert threads.rebalance() == 4  # within RECHECK_SECONDS of the last count: not recounted
        assert threads.rebalance(force=True) == torch.get_num_threads() == 2
        other.kill()
        other.wait()
        assert threads.rebalance(force=True) == torch.get_num_threads() == 4


def test_waiting_is_not_busy(policy):
    with threads.busy():
        assert threads.live_workers() == 1
        with threads.idle():
            assert threads.live_workers() == 0
        assert threads.live_workers() == 1
    with threads.idle():  # outside busy(): nothing to unregister or restore
        assert threads.live_workers() == 0
    assert threads.live_workers() == 0


def test_the_environment_wins(policy, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(2)
    with threads.busy() as n:  # the policy would give a lone job all 4 cores
        assert n == 2 == torch.get_num_threads()
    assert threads.user_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.user_threads()


def test_a_users_set_num_threads_wins(policy):
    with threads.busy():
        assert torch.get_num_threads() == 4
        torch.set_num_threads(3)  # the user's own choice, after the policy set 4
        assert threads.rebalance(force=True) == 3 == torch.get_num_threads()


def test_policy_off(policy, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_THREAD_POLICY", "off")
    torch.set_num_threads(1)
    with threads.busy() as n:
        assert n == 1 == torch.get_num_threads()


def test_a_second_process_waits_for_the_artifact_instead_of_building_it(tmp_path, monkeypatch, capfd):
    """Process A builds an artifact slowly; this process asks for the same one, says it waits, gets A's."""
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "artifacts"))
    builds = tmp_path / "builds.txt"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from saferlhfv.artifacts import cached
        from saferlhfv.config import load_config

        def build(folder):
            with open({str(builds)!r}, "a") as f:
                f.write("A\\n")
            time.sleep(4)
            return {{"built_by": "A"}}

        cached(load_config("tiny"), "probe", "k", build)
    """)
    builder = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while not builds.exists():  # A holds the lock and is building
            assert builder.poll() is None and time.monotonic() < deadline, "the builder did not start"
            time.sleep(0.05)
        from saferlhfv.artifacts import cached
        from saferlhfv.config import load_config

        def build_again(folder):
            builds.open("a").write("B\n")
            return {"built_by": "B"}

        folder, result = cached(load_config("tiny"), "probe", "k", build_again)
    finally:
        builder.wait(timeout=60)
    assert result == {"built_by": "A"}
    assert builds.read_text() == "A\n"  # built once
    assert json.loads((folder / "result.json").read_text()) == {"built_by": "A"}
    err = capfd.readouterr().err
    assert f"waiting for tiny/{folder.name}" in err and f"pid {builder.pid}" in err
