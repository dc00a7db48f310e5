"""Kill and resume: every training stage, SIGKILLed at seeded points, resumes to the uninterrupted result.

Each stage runs through its command line (``python -m saferlhfv.run STAGE --out DIR``) in a subprocess
on a very small world, one thread. A run killed with ``SIGKILL`` (:mod:`saferlhfv.faults`:
``SAFERLHFV_KILL_AT``) between checkpoints or in the middle of writing one is started again and
killed again (:data:`KILLS` times in all, 2 by default), then started a last time to the end; its
weights, its metrics lines (none lost, none twice) and for PPO lambda must equal one uninterrupted
run's. The kill points are drawn per stage from a seeded generator over
:data:`saferlhfv.faults.POINTS` (five kinds, all of them across the stages).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saferlhfv.io import read_metrics
from tests.helpers import SMALL_MODEL_AND_WORLD, upstream_artifacts

SMALL = SMALL_MODEL_AND_WORLD + [
    "sft.vision_steps=6",
    "sft.max_steps=6",
    "reward.max_steps=6",
    "cost.max_steps=6",
    "guard.max_steps=6",
    "guard.reading_steps=6",
    "guard.precursor_answers=0",
    "guard.rows_per_category=2",
    "sft.save_every=2",
    "reward.save_every=2",
    "cost.save_every=2",
    "guard.save_every=2",
    "ppo.iterations=4",
    "ppo.save_every=1",
]
LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]

#: stage -> (extra overrides, how often a run reaches each kill point). A loop of 6 steps saves at steps
#: 2 and 4 and at its end (3 checkpoints; the first has no predecessor to move aside); SFT runs two loops
#: (vision pretraining, then SFT), the guard two (reading, then the guard); PPO's 4 iterations save after
#: each and at the end (5 checkpoints).
LOOP = {"step": 6, "checkpoint:tmp": 3, "checkpoint:old": 2, "checkpoint:swapped": 3}
TWO_LOOPS = {k: 2 * v for k, v in LOOP.items()}
PPO = {"iteration": 4, "checkpoint:tmp": 5, "checkpoint:old": 4, "checkpoint:swapped": 5}
RUNS = {  # stage: (overrides, visits, the kind of point of its first kill)
    "sft": ([], TWO_LOOPS, "step"),
    "reward": ([], LOOP, "checkpoint:tmp"),
    "cost": ([], LOOP, "checkpoint:old"),
    "guard_model": ([], TWO_LOOPS, "checkpoint:swapped"),
    "ppo": ([], PPO, "iteration"),
    "ppo_shared": (LORA + ["ppo.shared_base=true"], PPO, "checkpoint:old"),
}
#: points every restarted run reaches (its last checkpoint is saved again, over an existing one).
AT_THE_END = ("checkpoint:tmp", "checkpoint:old", "checkpoint:swapped")
#: metric fields that measure time, not training.
TIMING = ("seconds", "time", "elapsed", "per_second")


#: kills per stage and test run (SAFERLHFV_RESUME_KILLS=5 for a deeper sweep; each costs one more process).
KILLS = int(os.environ.get("SAFERLHFV_RESUME_KILLS", "2"))


def kill_points(stage: str, n: int = KILLS) -> list[str]:
    """``n`` kills for ``stage``: its first-kill point (:data:`RUNS`; the stages together cover every kind)
    at a visit drawn from a generator seeded by the stage's name, then, in each restarted run, the first
    visit of a point that every restarted run reaches (drawn, never the previous kill's point)."""
    _, visits, first = RUNS[stage]
    rng = random.Random(f"resume-{stage}")
    kills = [f"{first}:{rng.randint(1, visits[first])}"]
    previous = first
    for _ in range(n - 1):
        previous = rng.choice([p for p in AT_THE_END if p != previous])
        kills.append(f"{previous}:1")
    return kills


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Upstream artifacts (SFT, RM-V, CM-V) for the full fine-tuning and the LoRA settings."""
    out = {}
    for name, extra in (("full", []), ("lora", LORA)):
        art = tmp_path_factory.mktemp(f"artifacts-{name}")
        with upstream_artifacts(art, SMALL + extra):
            out[name] = art
    return out


def _run(
    stage: str, overrides: list[str], out: Path, art: Path, kill: str | None = None
) -> subprocess.CompletedProcess:
    cli_stage = "ppo" if stage.startswith("ppo") else stage
    cmd = [sys.executable, "-m", "saferlhfv.run", cli_stage, "--preset", "tiny", "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, SAFERLHFV_ARTIFACTS=str(art), OMP_NUM_THREADS="1")
    env.pop("SAFERLHFV_KILL_AT", None)
    if kill:
        env["SAFERLHFV_KILL_AT"] = kill
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder``, keyed by file and name."""
    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, value in load_file(path).items():
            tensors[f"{path.relative_to(folder)}:{name}"] = value
    return tensors


def _metrics(folder: Path) -> dict[str, list[dict]]:
    """Every metrics.jsonl under ``folder``, its records without timing fields."""
    return {
        str(path.relative_to(folder)): [
            {k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in read_metrics(path)
        ]
        for path in sorted(folder.rglob("metrics.jsonl"))
    }


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(RUNS))
def test_a_killed_stage_resumes_to_the_uninterrupted_result(stage, caches, tmp_path):
    extra = RUNS[stage][0]
    overrides = SMALL + extra
    art = caches["lora" if "model.lora.enabled=true" in extra else "full"]
    reference = _run(stage, overrides, tmp_path / "reference", art)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    for kill in kill_points(stage):
        proc = _run(stage, overrides, out, art, kill=kill)
        assert proc.returncode == -9, f"{kill}: exit {proc.returncode}, not killed\n{proc.stderr[-2000:]}"
        assert not (out / "result.json").exists()
    finished = _run(stage, overrides, out, art)
    assert finished.returncode == 0, finished.stderr[-3000:]

    want, got = _weights(tmp_path / "reference" / "model"), _weights(out / "model")
    assert want.keys() == got.keys() and want
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])][:5]
    assert _metrics(out) == _metrics(tmp_path / "reference")  # no line lost, none logged twice
    if stage.startswith("ppo"):
        results = [json.loads((d / "result.json").read_text()) for d in (tmp_path / "reference", out)]
        assert results[0]["final_lambda"] == results[1]["final_lambda"]


def test_kill_points_are_seeded_valid_and_cover_every_kind():
    from saferlhfv.faults import POINTS

    kinds = set()
    for stage, (_, visits, _) in RUNS.items():
        kills = kill_points(stage)
        assert kills == kill_points(stage) and len(kills) == KILLS and len({k.rpartition(":")[0] for k in kills}) >= 2
        for kill in kills:
            point, _, n = kill.rpartition(":")
            assert point in POINTS and 1 <= int(n) <= visits[point]
            kinds.add(point)
    assert kinds == set(POINTS)  # the seeded draws kill at every kind of point somewhere


def test_a_kill_between_moving_the_old_checkpoint_aside_and_the_new_in_place_loses_nothing(tmp_path):
    """Only ``.checkpoint.old`` is left: loading puts it back (before: no checkpoint, training restarted)."""
    from saferlhfv.train.loop import CHECKPOINT, load_checkpoint, make_accelerator, save_checkpoint

    acc = make_accelerator()
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    model, opt = acc.prepare(model, opt)
    save_checkpoint(acc, tmp_path, {"step": 4})
    (tmp_path / CHECKPOINT).rename(tmp_path / f".{CHECKPOINT}.old")
    assert load_checkpoint(acc, tmp_path) == {"step": 4}
    assert (tmp_path / CHECKPOINT / "trainer_state.json").is_file()


def test_a_kill_after_the_swap_does_not_break_the_next_save(tmp_path):
    """A leftover ``.checkpoint.old`` (killed before its removal) is cleared by the next save (before: the
    next save's rename onto it failed with "Directory not empty")."""
    from saferlhfv.train.loop import CHECKPOINT, load_checkpoint, make_accelerator, save_checkpoint

    acc = make_accelerator()
    model, opt = acc.prepare(torch.nn.Linear(2, 1), torch.optim.AdamW(torch.nn.Linear(2, 1).parameters()))
    save_checkpoint(acc, tmp_path, {"step": 2})
    leftover = tmp_path / f".{CHECKPOINT}.old"
    leftover.mkdir()
    (leftover / "trainer_state.json").write_text('{"step": 0}')
    save_checkpoint(acc, tmp_path, {"step": 4})
    assert load_checkpoint(acc, tmp_path) == {"step": 4} and not leftover.exists()
