"""One command line for every stage: ``python -m saferlhfv.run STAGE [flags]``.

``STAGE`` is a stage of :mod:`saferlhfv.stages` (``sft``, ``reward``, ``cost``, ``guard_model``,
``guard``, ``ppo``, ``monitor``) or one of the PPO methods the pipeline compares (``ppo_lag``, ``ppo_reward_only``,
``ppo_repo``, ``ppo_grpo_lag``, ``ppo_grpo_repo``). Every stage takes the same flags:

==================  =========================================================================
``--preset P``      tiny | small | paper, or a YAML path (default tiny)
``--set K=V``       override one config field (repeatable), e.g. ``--set ppo.threshold=-3``
``--out DIR``       train into ``DIR`` instead of the artifact cache (upstream stages still
                    come from the cache); ``DIR/result.json`` is written either way
``--no-resume``     start over: ignore a checkpoint or a cached result of this stage
``--json``          print only the full result as JSON (for scripts)
``--seeds S ...``   ``ppo`` only: one cached run per seed of the RL stage, then mean +- std
==================  =========================================================================

Without ``--json`` it prints the result without its long per-item tables, then the folder.
PPO also runs under several processes (the upstream artifacts must be cached first)::

    accelerate launch --config_file lib/saferlhfv/presets/accelerate/zero2.yaml \\
        -m saferlhfv.run ppo --preset paper
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from saferlhfv.artifacts import RESULT
from saferlhfv.config import add_config_arguments, config_from_args
from saferlhfv.io import write_json_atomic
from saferlhfv.stages import PPO_METHODS, PPO_SETTINGS, STAGES, artifact_dir, ensure, owner, resolve, upstream_dirs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    names = [*STAGES, *PPO_METHODS, *PPO_SETTINGS]
    parser = argparse.ArgumentParser(
        prog="python -m saferlhfv.run",
        description="Train (or read from the cache) one stage of the stage table, and print its result as JSON.",
        epilog="stages:\n" + "\n".join(f"  {s.name}: {s.help}" for s in STAGES.values()),
    )
    parser.add_argument("stage", choices=names, metavar="STAGE", help=f"one of {', '.join(names)}")
    add_config_arguments(parser)
    parser.add_argument("--out", help="train into this folder instead of the artifact cache")
    parser.add_argument("--no-resume", action="store_true", help="start over, ignoring a checkpoint or cached result")
    parser.add_argument("--json", action="store_true", help="print only the full result as JSON")
    parser.add_argument("--seeds", type=int, nargs="+", help="ppo only: one cached run per seed, then mean +- std")
    return parser


def _print(result: dict[str, Any], hidden: tuple[str, ...], *, full: bool) -> None:
    print(json.dumps(result if full else {k: v for k, v in result.items() if k not in hidden}, indent=2))


def _seeds(args: argparse.Namespace, stage, cfg) -> int:
    from saferlhfv.sweep import seed_runs

    if stage.name != "ppo":
        raise SystemExit("--seeds repeats the RL stage: use it with ppo or a PPO method")
    if args.out or args.no_resume:
        raise SystemExit("--seeds trains into the artifact cache (no --out, no --no-resume)")
    report = seed_runs(cfg, args.seeds)
    hide = stage.hidden
    print(json.dumps({**report, "runs": [{k: v for k, v in r.items() if k not in hide} for r in report["runs"]]},
                     indent=2))  # fmt: skip
    if not args.json:
        print("mean +- std over seeds " + " ".join(map(str, args.seeds)) + ":")
        for key, mean in report["mean"].items():
            print(f"  {key:<26} {mean:8.4f} +- {report['std'][key]:.4f}")
    return 0


def _check_variant_overrides(name: str, preset: str, overrides: list[str]) -> None:
    """Refuse a ``--set`` of a key that the variant ``name`` fixes (it would be silently replaced by the
    variant's value): say how to run the stage with that key set instead."""
    stage = owner(name)
    fixed = stage.variants.get(name, {})
    clash = [key for key in (o.split("=", 1)[0].strip() for o in overrides) if key in fixed]
    if clash:
        own = " ".join(f"--set {k}={v}" for k, v in fixed.items() if k not in clash)
        raise SystemExit(
            f"{name} fixes {', '.join(f'{k}={fixed[k]}' for k in clash)}, so --set {clash[0]} would be ignored; "
            "run the stage itself with every setting instead: "
            f"python -m saferlhfv.run {stage.name} --preset {preset} {own} " + " ".join(f"--set {o}" for o in overrides)
        )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    from accelerate import PartialState

    args = _parser().parse_args(argv)
    _check_variant_overrides(args.stage, args.preset, args.overrides)
    stage, cfg = resolve(args.stage, config_from_args(args))
    if args.seeds:
        return _seeds(args, stage, cfg)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1 and not stage.processes:
        raise SystemExit(f"{stage.name} runs in a single process; only {[s for s in STAGES if STAGES[s].processes]} "
                         "run under accelerate launch / torchrun")  # fmt: skip
    finished = False
    try:
        if state.num_processes == 1 and not args.out:
            folder, result = ensure(stage.name, cfg, force=args.no_resume)
        else:
            dirs = upstream_dirs(cfg, stage.name, train_missing=state.num_processes == 1)
            folder = Path(args.out) if args.out else artifact_dir(cfg, stage.name)
            if state.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
                cfg.save(folder / "config.yaml")
            state.wait_for_everyone()
            result = stage.build(cfg, folder, dirs, not args.no_resume)
            if state.is_main_process:
                write_json_atomic(folder / RESULT, result)
        if state.is_main_process:
            _print(result, stage.hidden, full=args.json)
            if not args.json:
                print(f"artifact: {folder}")
        finished = True
    finally:
        # gloo process groups can abort at exit unless they are torn down explicitly. After an error, no
        # barrier: the other ranks may be inside another collective, and a mismatched one hangs them all;
        # this process exits with the error and the launcher (torchrun, accelerate) stops the others.
        if finished and torch.distributed.is_available() and torch.distributed.is_initialized():
            state.wait_for_everyone()
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
