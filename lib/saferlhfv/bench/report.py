"""The bench's parts run together, the text report, and the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.bench.measure import (
    _device,
    _peak_memory_mb,
    bench_methods,
    bench_model,
    bench_ppo,
    bench_score_model,
    stage_times,
)
from saferlhfv.bench.memory import role_memory
from saferlhfv.bench.plan import add_plan_arguments, plan_command
from saferlhfv.config import Config, add_config_arguments, config_from_args

PARTS = ("model", "score", "ppo", "methods", "stages", "memory", "concurrent")
#: what runs without ``--parts``: all but ``concurrent``, which starts up to 12 processes (~2 minutes on tiny).
DEFAULT_PARTS = PARTS[:-1]


def run_bench(
    cfg: Config,
    parts: tuple[str, ...] = DEFAULT_PARTS,
    *,
    batch_size: int = 8,
    new_tokens: int = 32,
    repeats: int = 5,
    ppo_iterations: int = 2,
    summary: str | Path | None = None,
    live_stages: bool = True,
) -> dict[str, Any]:
    """Run the chosen ``parts`` (see the module docstring); a part that fails reports its error instead."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {unknown}; choose from {PARTS}")
    device = _device()
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    calls = {
        "model": lambda: bench_model(cfg, batch_size=batch_size, new_tokens=new_tokens, repeats=repeats),
        "score": lambda: bench_score_model(cfg, batch_size=batch_size, repeats=repeats),
        "ppo": lambda: bench_ppo(cfg, iterations=ppo_iterations),
        "methods": lambda: bench_methods(cfg, iterations=ppo_iterations),
        "stages": lambda: stage_times(cfg, summary=summary, live=live_stages),
        "memory": lambda: role_memory(cfg),
        "concurrent": lambda: _concurrent(cfg, batch_size=batch_size),
    }
    for part in parts:
        start = time.perf_counter()
        try:
            out[part] = calls[part]()
        except Exception as err:  # one part failing (e.g. weights not downloadable) keeps the others
            out[part] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        if isinstance(out[part], dict):
            out[part]["bench_seconds"] = round(time.perf_counter() - start, 1)
    out["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
    return out


def _concurrent(cfg: Config, *, batch_size: int) -> dict[str, Any]:
    from saferlhfv.bench.concurrent import concurrent_jobs  # not at import: it is also the workers' entry point

    return concurrent_jobs(cfg, batch_size=batch_size)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_report(result: dict[str, Any]) -> str:
    """The human-readable table ``python -m saferlhfv.bench`` prints."""
    lines = [f"saferlhfv bench: preset {result['preset']} on {result['device']} ({result['threads']} threads)"]
    model, score, ppo = result.get("model", {}), result.get("score", {}), result.get("ppo", {})
    if any(k in result for k in ("model", "score", "ppo")):
        lines += ["", "throughput (measured)", f"{'what':<34} {'value':>12}  unit"]
        rows = [
            ("policy parameters", model.get("parameters"), ""),
            ("SFT train step", model.get("train_samples_per_s"), f"sequences/s (batch {model.get('batch_size')})"),
            ("RM-V / CM-V train step", score.get("score_train_pairs_per_s"), "pairs/s"),
            ("PPO-Lagrangian iteration", ppo.get("ppo_episodes_per_s"), f"episodes/s ({ppo.get('ppo_upstream')})"),
            ("PPO rollout generation", ppo.get("ppo_rollout_tokens_per_s"), "tokens/s (whole iteration)"),
            ("generation, KV cache", model.get("generate_tokens_per_s"), f"tokens/s ({model.get('new_tokens')} new)"),
            (
                "six PPO roles built",
                ppo.get("ppo_six_roles_built_memory_mb"),
                f"MB ({ppo.get('ppo_six_roles_memory_kind')})",
            ),
        ]
        lines += [f"{a:<34} {_fmt(b):>12}  {c}" for a, b, c in rows if b is not None]
        for name, part in (("model", model), ("score", score), ("ppo", ppo)):
            if "error" in part:
                lines.append(f"{name}: {part['error']}")
    if "methods" in result:
        methods = result["methods"]
        header = f"{'stage':<16} {'episodes/s':>11} {'iteration s':>12} {'rollout batch':>14}"
        lines += ["", "PPO methods, whole iterations (their memory: the memory part)", header]
        if isinstance(methods, dict):
            lines.append(f"error: {methods.get('error')}")
        else:
            for r in methods:
                lines.append(
                    f"{r['stage']:<16} {_fmt(r['ppo_episodes_per_s']):>11} {_fmt(r['ppo_iteration_s']):>12} "
                    f"{_fmt(r['ppo_rollout_batch']):>14}"
                )
    if "stages" in result:
        stages = result["stages"]
        lines += ["", "pipeline stages", f"{'stage':<16} {'seconds':>9} {'samples':>9}  {'samples/s':>9}  source"]
        if isinstance(stages, dict):
            lines.append(f"error: {stages.get('error')}")
        else:
            for r in stages:
                per = f"{_fmt(r['samples_per_s'])} {r['unit']}" if r["samples_per_s"] else "-"
                lines.append(
                    f"{r['stage']:<16} {_fmt(r['seconds']):>9} {_fmt(r['samples']):>9}  {per:>9}  {r['source']}"
                )
            lines.append("(trained stages' seconds include their evaluation)")
    if "memory" in result:
        m = result["memory"]
        lines += ["", "memory of PPO's six roles (measured: build + one iteration, each layout in its own process)"]
        if "error" in m:
            lines.append(f"error: {m['error']}")
        else:
            lines.append(f"{'layout':<34} {'weights MB':>11} {'grad+AdamW MB':>14} {'peak MB':>9} {'trainable':>11}")
            for r in m["layouts"]:
                lines.append(
                    f"{r['layout']:<34} {r['weights_mb']:>11,.2f} {r['train_state_mb']:>14,.2f} "
                    f"{r['peak_mb']:>9,.1f} {_fmt(r['trainable_parameters']):>11}"
                )
            lines.append(
                f"(LoRA rank {m['lora_rank']}; peak = {m['peak_kind']}; six separate models hold "
                f"{m['separate_over_shared']:g}x the shared base's weights; four-role GRPO holds "
                f"{m['grpo_over_ppo_train_state']:g}x six-role PPO's gradient + AdamW state)"
            )
    if "concurrent" in result:
        c = result["concurrent"]
        lines += ["", "jobs at once (each: SFT step + sampled generation per round; ratio = aggregate / one alone)"]
        if "error" in c:
            lines.append(f"error: {c['error']}")
        else:
            lines.append(f"{'thread policy':<14} {'jobs':>5} {'threads/job':>12} {'s/round':>9} "
                         f"{'rounds/s':>9} {'ratio':>7}")  # fmt: skip
            for r in c["runs"]:
                threads = ",".join(str(t) for t in r["threads_per_job"])
                lines.append(f"{r['policy']:<14} {r['jobs']:>5} {threads:>12} {r['round_s']:>9.3f} "
                             f"{r['rounds_per_s']:>9.2f} {_fmt(r['ratio']):>7}")  # fmt: skip
            if "alone_on_over_off" in c:
                lines.append(f"(one job alone with the policy runs at {c['alone_on_over_off']:g}x its speed without; "
                             f"{c['cores']} cores)")  # fmt: skip
    lines += ["", f"peak memory of this process: {_fmt(result.get('peak_memory_mb'))} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                        help="what to measure (default: all but concurrent)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppo-iterations", type=int, default=2, help="timed PPO iterations after one warm-up")
    parser.add_argument("--summary", help="a pipeline run's summary.json for the stage wall times")
    parser.add_argument("--no-live-stages", action="store_true", help="do not time the data and smoke stages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_plan_arguments(parser)
    args = parser.parse_args(argv)
    if args.plan:  # from the model config alone: nothing is built or measured
        print(plan_command(args))
        return 0
    cfg: Config = config_from_args(args)
    result = run_bench(
        cfg,
        tuple(args.parts),
        batch_size=args.batch_size,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        ppo_iterations=args.ppo_iterations,
        summary=args.summary,
        live_stages=not args.no_live_stages,
    )
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
