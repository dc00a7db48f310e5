"""The GPU check: every real model family through the stages on a CUDA GPU, ``python -m saferlhfv.check_gpu``.

For each family (``--families``, default all of :data:`FAMILIES`: tiny random configs of the real
LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL classes, ``model.tiny_arch``) in bfloat16, the stages of
:mod:`saferlhfv.stages`, each through :func:`saferlhfv.stages.ensure` into a temporary artifact cache
(``SAFERLHFV_ARTIFACTS``):

1. SFT (the precursor, a few optimiser steps), 2. RM-V, 3. CM-V (LoRA adapters on the SFT model),
4. PPO-Lagrangian for ``--iterations`` iterations in the shared-base layout (one frozen base, five
   adapters) with gradient checkpointing.

Then once, for the first family, full fine-tuning under DeepSpeed ZeRO-2, each in a subprocess started
by ``accelerate launch --config_file lib/saferlhfv/presets/accelerate/zero2.yaml --num_processes 1``:
SFT, then (RM-V and CM-V in this process) safe GRPO in separate models, whose only trained role is the
actor. PPO-Lagrangian's actor and two critics cannot run under DeepSpeed (accelerate prepares one model
per Accelerator; the trainer says so) and the shared base refuses it.

Each step prints its wall time and the peak CUDA memory it allocated (``torch.cuda.max_memory_allocated``,
reset before the step); a step that fails prints its error and the check goes on with the next family;
the exit code is 1 if any step failed.

Without a CUDA GPU nothing runs: the check says so, lists what it would run (``--dry-run`` lists it on
any machine) and exits 0. ``--device cpu`` runs the same steps on the CPU in float32 (no launch), a
smoke test of the check itself. The GPU check has not been run on a GPU in this repository's CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saferlhfv.paths import presets_dir

__all__ = ["FAMILIES", "CHECK_OVERRIDES", "Step", "StepResult", "plan_steps", "run_steps", "main"]

#: the real families the tiny route builds with their own classes (``model.tiny_arch``).
FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")

#: a tiny model and world on which every stage takes seconds: mechanics and memory, not learning.
CHECK_OVERRIDES: tuple[str, ...] = (
    "model.tiny_hidden_size=64",
    "model.tiny_layers=2",
    "model.tiny_intermediate_size=128",
    "model.tiny_vocab_size=600",
    "model.gradient_checkpointing=true",
    "model.freeze_vision_tower=true",
    "data.pairs_per_category_train=2",
    "data.pairs_per_category_eval=1",
    "data.prompts_per_category_train=2",
    "data.prompts_per_category_eval=1",
    "data.sft_per_category=4",
    "data.max_response_tokens=8",
    "sft.vision_steps=0",  # the tiny LLaVA's stand-in for a pretrained vision encoder: not needed here
    "sft.max_steps=4",
    "reward.max_steps=4",
    "cost.max_steps=4",
    "ppo.rollout_batch_size=4",
    "ppo.batch_size=2",
    "ppo.max_new_tokens=8",
    "ppo.save_every=0",
)
#: PPO's roles as one base with five LoRA adapters (what runs for every family).
SHARED = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "ppo.shared_base=true")
#: full fine-tuning in separate models (what runs under ZeRO-2).
SEPARATE = ("model.lora.enabled=false", "ppo.shared_base=false")
#: safe GRPO: no critics, the actor is the only trained role (what DeepSpeed can prepare).
GRPO = ("ppo.algorithm=grpo_lag", "ppo.samples_per_prompt=2")
LABELS = {"sft": "SFT", "reward": "RM-V", "cost": "CM-V", "ppo": "PPO-Lagrangian"}
ZERO2 = "zero2.yaml"


@dataclass(frozen=True)
class Step:
    """One step of the check.

    Attributes:
        family: ``model.tiny_arch``.
        stage: a stage of :data:`saferlhfv.stages.STAGES` (``sft``, ``reward``, ``cost``, ``ppo``).
        label: what the table calls it.
        overrides: the ``--set`` list of the tiny preset this step's config takes.
        launch: ``accelerate launch`` arguments when the step runs in a subprocess (empty: in this process).
    """

    family: str
    stage: str
    label: str
    overrides: tuple[str, ...]
    launch: tuple[str, ...] = ()

    def command(self) -> list[str]:
        """The command line that does the same as this step (``python -m saferlhfv.run`` for in-process steps)."""
        sets = [a for o in self.overrides for a in ("--set", o)]
        if self.launch:
            return ["accelerate", "launch", *self.launch, "-m", "saferlhfv.run", self.stage, "--preset", "tiny", *sets]
        return ["python", "-m", "saferlhfv.run", self.stage, "--preset", "tiny", *sets]


@dataclass(frozen=True)
class StepResult:
    """What one step measured: wall seconds, peak memory in MiB (CUDA allocated, or the CPU process's peak
    resident memory), ``ok`` / ``FAILED: ...`` / ``skipped: ...``, and the stage's metrics (in-process steps)."""

    step: Step
    seconds: float | None
    peak_mib: float | None
    status: str
    metrics: dict[str, Any] | None = None


def plan_steps(
    families: tuple[str, ...] = FAMILIES, *, iterations: int = 3, dtype: str = "bfloat16", launch: bool = True
) -> list[Step]:
    """The steps the check runs, in order (module docstring).

    Args:
        families: ``model.tiny_arch`` values.
        iterations: PPO-Lagrangian iterations of each PPO step.
        dtype: ``model.dtype`` of every step.
        launch: end with the ZeRO-2 ``accelerate launch`` steps of the first family (SFT and safe GRPO,
            full fine-tuning).
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {FAMILIES}")
    common = (*CHECK_OVERRIDES, f"model.dtype={dtype}", f"ppo.iterations={iterations}")
    steps = []
    for family in families:
        overrides = (*common, f"model.tiny_arch={family}", *SHARED)
        for stage in ("sft", "reward", "cost"):
            steps.append(Step(family=family, stage=stage, label=LABELS[stage], overrides=overrides))
        label = f"PPO-Lagrangian, shared base + 5 adapters, {iterations} iterations"
        steps.append(Step(family=family, stage="ppo", label=label, overrides=overrides))
    if launch and families:
        overrides = (*common, f"model.tiny_arch={families[0]}", *SEPARATE)
        zero2 = presets_dir() / "accelerate" / ZERO2
        launch_args = ("--config_file", str(zero2), "--num_processes", "1")
        where = f"ZeRO-2 (accelerate launch {ZERO2}, 1 GPU)"
        steps.append(Step(family=families[0], stage="sft", label=f"SFT, full fine-tuning, {where}",
                          overrides=overrides, launch=launch_args))  # fmt: skip
        for stage in ("reward", "cost"):
            label = f"{LABELS[stage]}, full fine-tuning (for the launch)"
            steps.append(Step(family=families[0], stage=stage, label=label, overrides=overrides))
        label = f"safe GRPO, separate models (the actor trains), {where}"
        steps.append(Step(family=families[0], stage="ppo", label=label, overrides=(*overrides, *GRPO),
                          launch=launch_args))  # fmt: skip
    return steps


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _ensure_timed(stage: str, overrides: list[str], device: str) -> dict[str, Any]:
    """``stages.ensure(stage)`` on the tiny preset with ``overrides``: ``{"seconds", "peak_mib", "metrics"}``."""
    from saferlhfv.config import load_config
    from saferlhfv.stages import ensure

    cfg = load_config("tiny", overrides=overrides)
    _reset(device)
    start = time.perf_counter()
    _, metrics = ensure(stage, cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = round(time.perf_counter() - start, 2)
    return {"seconds": seconds, "peak_mib": round(_peak_mib(device), 1), "metrics": metrics}


def _error(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:200]


def _launch(step: Step, env: dict[str, str]) -> StepResult:
    """Run ``step`` under ``accelerate launch`` (this module's ``--worker``), read back what it measured."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return StepResult(step, None, None, "skipped: deepspeed is not installed (pip install -e '.[deepspeed]')")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *step.launch, "-m", "saferlhfv.check_gpu", "--worker",
           step.stage, *[a for o in step.overrides for a in ("--set", o)]]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        return StepResult(step, round(time.perf_counter() - start, 2), None, "FAILED: timed out after 1800 s")
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHECK_GPU ")]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return StepResult(step, round(time.perf_counter() - start, 2), None, f"FAILED: {tail}"[:200])
    measured = json.loads(found[-1][len("CHECK_GPU ") :])
    return StepResult(step, measured["seconds"], measured["peak_mib"], "ok")


def run_steps(steps: list[Step], *, device: str, artifacts: Path) -> list[StepResult]:
    """Run ``steps`` into the artifact cache ``artifacts``, printing each result as it comes.

    A failed step skips the later steps that build on it (those with the same family and overrides).
    """
    old = os.environ.get("SAFERLHFV_ARTIFACTS")
    os.environ["SAFERLHFV_ARTIFACTS"] = str(artifacts)
    env = dict(os.environ)
    results: list[StepResult] = []
    failed: set[tuple[str, tuple[str, ...]]] = set()
    print(_header(device))
    try:
        for step in steps:
            key = (step.family, step.overrides)
            if key in failed:
                result = StepResult(step, None, None, "skipped: an earlier step of this config failed")
            elif step.launch:
                result = _launch(step, env) if device == "cuda" else StepResult(step, None, None, "skipped: needs CUDA")
            else:
                try:
                    measured = _ensure_timed(step.stage, list(step.overrides), device)
                    result = StepResult(step, measured["seconds"], measured["peak_mib"], "ok", measured["metrics"])
                except Exception as err:  # the check reports every failure and goes on
                    result = StepResult(step, None, None, f"FAILED: {_error(err)}")
            if result.status.startswith("FAILED"):
                failed.add(key)
            results.append(result)
            print(_row(result), flush=True)
    finally:
        if old is None:
            os.environ.pop("SAFERLHFV_ARTIFACTS", None)
        else:
            os.environ["SAFERLHFV_ARTIFACTS"] = old
    return results


def _header(device: str) -> str:
    peak = "peak MiB" if device == "cuda" else "peak RSS MiB"
    return f"{'family':<11} {'step':<72} {'seconds':>8} {peak:>12}  status"


def _row(r: StepResult) -> str:
    seconds = f"{r.seconds:8.1f}" if r.seconds is not None else f"{'-':>8}"
    peak = f"{r.peak_mib:12,.1f}" if r.peak_mib is not None else f"{'-':>12}"
    return f"{r.step.family:<11} {r.step.label:<72} {seconds} {peak}  {r.status}"


def describe(steps: list[Step]) -> str:
    """The planned steps, each with the command line that does the same (the overrides all steps share
    written once, as ``$COMMON``)."""
    common = list(steps[0].overrides) if steps else []
    for s in steps:
        while common and tuple(common) != s.overrides[: len(common)]:
            common.pop()
    sets = " ".join(f"--set {o}" for o in common)
    lines = [f"COMMON='{sets}'"]
    for i, s in enumerate(steps, 1):
        rest = Step(family=s.family, stage=s.stage, label=s.label, overrides=s.overrides[len(common) :],
                    launch=s.launch).command()  # fmt: skip
        at = rest.index("tiny") + 1
        where = "a subprocess" if s.launch else "this process, stages.ensure"
        lines += [f"{i:2d}. [{s.family}] {s.label}, in {where}",
                  f"    {shlex.join(rest[:at])} $COMMON {shlex.join(rest[at:])}".rstrip()]  # fmt: skip
    return "\n".join(lines)


def _worker(argv: list[str]) -> int:
    """``python -m saferlhfv.check_gpu --worker STAGE --set K=V ...`` (under ``accelerate launch``): build
    ``STAGE`` through ``stages.ensure`` in this process, print ``CHECK_GPU {"seconds", "peak_mib"}``."""
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.check_gpu --worker")
    parser.add_argument("stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured = _ensure_timed(args.stage, args.overrides, device)
    print("CHECK_GPU " + json.dumps({k: measured[k] for k in ("seconds", "peak_mib")}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 without a GPU, 1 if a step failed)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.check_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="model.tiny_arch values to check (default: all four)")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=3, help="PPO-Lagrangian iterations per family (default 3)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: the GPU if there is one (else list, exit 0); cpu: on the CPU, float32")  # fmt: skip
    parser.add_argument("--no-launch", action="store_true", help="leave out the ZeRO-2 accelerate launch")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their command lines, run nothing")
    parser.add_argument("--artifacts", help="artifact cache to train into (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.device == "cpu":  # the stages pick the GPU whenever torch sees one: hide it before anything asks
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    cuda = args.device != "cpu" and torch.cuda.is_available()
    device = "cpu" if args.device == "cpu" else "cuda" if cuda else None
    dtype = "float32" if device == "cpu" else "bfloat16"
    steps = plan_steps(tuple(args.families), iterations=args.iterations, dtype=dtype,
                       launch=not args.no_launch and device != "cpu")  # fmt: skip
    if args.device == "cuda" and not cuda and not args.dry_run:
        print("--device cuda: no CUDA GPU found")
        return 1
    if args.dry_run or device is None:
        if args.dry_run:
            print(f"dry run: the check would run these steps on {device or 'a CUDA GPU'}:")
        else:
            print("no CUDA GPU found (torch.cuda.is_available() is False): nothing was run. On a GPU this check runs:")
        print(describe(steps))
        return 0
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"saferlhfv GPU check on {name}, {dtype}, torch {torch.__version__}")
    if args.artifacts:
        results = run_steps(steps, device=device, artifacts=Path(args.artifacts))
    else:
        with tempfile.TemporaryDirectory(prefix="saferlhfv-check-gpu-") as tmp:
            results = run_steps(steps, device=device, artifacts=Path(tmp))
    failed = [r for r in results if r.status.startswith("FAILED")]
    print(f"{len(failed)} of {len(results)} steps FAILED" if failed else f"all {len(results)} steps ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
