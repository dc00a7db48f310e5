"""Where one PPO-Lagrangian iteration's time goes: ``python -m saferlhfv.bench --profile``.

For each rollout batch (``--profile-batches``, default 16 and 64) the real trainer is built on untrained
models (every answer runs to ``--response-length`` tokens, as in ``--peers``), then:

1. one iteration under ``FlopCounterMode``: the FLOPs of each phase;
2. ``--profile-iterations`` (default 2) timed iterations: the wall time of each phase (mean);
3. one iteration under ``torch.profiler``: the operators with the most self CPU time.

Phases are found without touching the training code: the bench wraps, on this one trainer object, the
actor's ``generate``, each role's ``forward``, ``_optimise`` (backward + gradient clipping + AdamW),
``update``, ``rollout``, ``metrics`` and ``step``. A phase's time is *exclusive*: a wrapped call inside
another is charged to its own phase, not to its caller's; generation includes the forwards it makes.
What is left in ``rollout: other`` is encoding the prompts (pictures and chat template), cutting and
decoding the answers; in ``iteration: other`` GAE, the multiplier, advantages and the finite checks.
The vision towers are timed apart (forward hooks): their time is also inside the phases that call them.

Units: seconds (wall-clock) and CPU-seconds of this process (steadier when other jobs share the machine),
milliseconds (wall) per episode, GFLOP (1e9 FLOPs), GFLOP per CPU-second.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saferlhfv.bench.ours import LAYOUTS, Sizes, build_trainer, ppo_config


class PhaseClock:
    """Exclusive wall time (and optionally FLOPs) per phase label, over wrapped calls that may nest.

    Attributes:
        seconds, cpu_seconds, flops, calls: label -> exclusive wall seconds / exclusive CPU seconds of this
            process / exclusive FLOPs / calls.
        counter: a live ``FlopCounterMode`` whose running total is read at each wrapped call's edges
            (``None``: no FLOPs).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[dict[str, Any]] = []
        self.counter = None

    def reset(self) -> None:
        """Forget what was measured (the stack must be empty)."""
        self.seconds.clear()
        self.cpu_seconds.clear()
        self.flops.clear()
        self.calls.clear()

    def inside(self, label_prefix: str) -> bool:
        """Whether a wrapped call whose label starts with ``label_prefix`` is running."""
        return any(f["label"].startswith(label_prefix) for f in self.stack)

    def _total_flops(self) -> float:
        return float(self.counter.get_total_flops()) if self.counter is not None else 0.0

    def wrap(self, fn: Callable, label: str | Callable[..., str], *, opaque: bool = False) -> Callable:
        """``fn`` timed under ``label`` (a string, or a function of the call's arguments giving one).

        ``opaque``: wrapped calls made inside this one are not split off (generation's forwards).
        """

        @functools.wraps(fn)  # generate() reads forward's signature: keep it visible
        def wrapped(*args, **kwargs):
            if self.stack and self.stack[-1]["opaque"]:
                return fn(*args, **kwargs)
            name = label(*args, **kwargs) if callable(label) else label
            frame = {"label": name, "opaque": opaque, "child_s": 0.0, "child_cpu": 0.0, "child_flops": 0.0}
            self.stack.append(frame)
            f0, t0, c0 = self._total_flops(), time.perf_counter(), time.process_time()
            try:
                with torch.profiler.record_function(name):
                    return fn(*args, **kwargs)
            finally:
                took, done, cpu = time.perf_counter() - t0, self._total_flops() - f0, time.process_time() - c0
                self.stack.pop()
                self.seconds[name] += took - frame["child_s"]
                self.cpu_seconds[name] += cpu - frame["child_cpu"]
                self.flops[name] += done - frame["child_flops"]
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1]["child_s"] += took
                    self.stack[-1]["child_cpu"] += cpu
                    self.stack[-1]["child_flops"] += done

        return wrapped


def _distinct(*modules) -> list[torch.nn.Module]:
    seen, out = set(), []
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def instrument(trainer, clock: PhaseClock) -> dict[str, Any]:
    """Wrap the trainer's steps and roles (instance attributes only) and hook the vision towers.

    Returns:
        ``vision``: a dict the hooks fill (``seconds``, ``calls``, ``images``), and ``towers``: how many
        distinct vision towers the roles hold.
    """
    r = trainer.roles

    def role_label(role: str) -> Callable[..., str]:
        def label(*args, **kwargs) -> str:
            if clock.inside("update"):
                return "update: actor forward" if role == "actor" else "update: critics forward"
            if role in ("reward_critic", "cost_critic") and trainer.fused_critics:
                return "critics forward, once (values for GAE + value loss)"
            return {
                "actor": "rollout: actor log-probs",
                "reference": "rollout: reference log-probs",
                "reward_model": "rollout: RM-V + CM-V scores",
                "cost_model": "rollout: RM-V + CM-V scores",
                "reward_critic": "rollout: critic values",
                "cost_critic": "rollout: critic values",
            }[role]

        return label

    actor = r.unwrap(r.actor)
    actor.generate = clock.wrap(actor.generate, "rollout: generation (actor, KV cache)", opaque=True)
    for role in ("actor", "reference", "reward_model", "cost_model", "reward_critic", "cost_critic"):
        wrapped = getattr(r, role, None)
        for module in _distinct(wrapped, r.unwrap(wrapped) if wrapped is not None else None):
            module.forward = clock.wrap(module.forward, role_label(role))

    def optimise_label(loss, role):
        return "update: actor backward + AdamW" if role == "actor" else "update: critics backward + AdamW"

    trainer._optimise = clock.wrap(trainer._optimise, optimise_label)
    trainer.update = clock.wrap(trainer.update, "update: other (minibatches, losses)")
    trainer.rollout = clock.wrap(trainer.rollout, "rollout: other (encode prompts, cut + decode answers)")
    trainer.metrics = clock.wrap(trainer.metrics, "iteration: metrics + oracle judge")
    trainer.step = clock.wrap(trainer.step, "iteration: other (GAE, multiplier, advantages, checks)")

    vision = {"seconds": 0.0, "calls": 0, "images": 0}
    towers = {}
    for model in r.models():
        for name, module in model.named_modules():
            if name.endswith("vision_tower") and id(module) not in towers:
                towers[id(module)] = module
    starts: list[float] = []

    def pre(module, args, kwargs):
        starts.append(time.perf_counter())
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        vision["images"] += int(pixels.shape[0]) if torch.is_tensor(pixels) else 0

    def post(module, args, kwargs, output):
        vision["seconds"] += time.perf_counter() - starts.pop()
        vision["calls"] += 1

    for module in towers.values():
        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)
    return {"vision": vision, "towers": len(towers)}


def top_operators(prof, *, top: int, total_s: float) -> list[dict[str, Any]]:
    """The ``top`` profiler events by self CPU time: ``name``, ``self_s``, ``share`` (of ``total_s``), ``calls``."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"name": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4),
             "share": round(e.self_cpu_time_total / 1e6 / total_s, 4), "calls": int(e.count)}
            for e in events]  # fmt: skip


def profile_batch(
    *,
    batch: int,
    response_length: int = 32,
    epochs: int = 1,
    iterations: int = 2,
    sizes: Sizes | None = None,
    layout: str = "separate",
    top: int = 15,
) -> dict[str, Any]:
    """Profile PPO-Lagrangian iterations at one rollout batch (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ppo_config(batch=batch, response_length=response_length, epochs=epochs, sizes=sizes or Sizes(),
                     layout=layout)  # fmt: skip
    clock = PhaseClock()
    with tempfile.TemporaryDirectory(prefix="saferlhfv-profile-") as tmp:
        trainer = build_trainer(cfg, Path(tmp), layout=layout)
        hooks = instrument(trainer, clock)
        clock.counter = FlopCounterMode(display=False)
        with clock.counter:
            trainer.step()
        flops = dict(clock.flops)
        clock.counter = None
        clock.reset()
        vision = hooks["vision"]
        vision.update(seconds=0.0, calls=0, images=0)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(iterations):
            trainer.step()
        iteration_s = (time.perf_counter() - start) / iterations
        iteration_cpu_s = (time.process_time() - start_cpu) / iterations
        seconds = {k: v / iterations for k, v in clock.seconds.items()}
        cpu_seconds = {k: v / iterations for k, v in clock.cpu_seconds.items()}
        calls = {k: v / iterations for k, v in clock.calls.items()}
        vision_s, vision_calls = vision["seconds"] / iterations, vision["calls"] / iterations
        vision_images = vision["images"] / iterations
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            trainer.step()
            profiled_s = time.perf_counter() - t0
    phases = [
        {"phase": k, "seconds": round(s, 4), "share": round(s / iteration_s, 4),
         "cpu_s": round(cpu_seconds.get(k, 0.0), 4), "cpu_share": round(cpu_seconds.get(k, 0.0) / iteration_cpu_s, 4),
         "ms_per_episode": round(1000 * s / batch, 3), "calls": calls.get(k, 0),
         "gflop": round(flops.get(k, 0.0) / 1e9, 3),
         "gflop_per_s": round(flops.get(k, 0.0) / 1e9 / s, 2) if s > 0 else None,
         "gflop_per_cpu_s": round(flops.get(k, 0.0) / 1e9 / cpu_seconds[k], 2) if cpu_seconds.get(k) else None}
        for k, s in sorted(seconds.items(), key=lambda kv: -kv[1])
    ]  # fmt: skip
    return {
        "batch": batch,
        "layout": layout,
        "response_length": response_length,
        "threads": torch.get_num_threads(),
        "iteration_s": round(iteration_s, 4),
        "iteration_cpu_s": round(iteration_cpu_s, 4),
        "episodes_per_s": round(batch / iteration_s, 3),
        "episodes_per_cpu_s": round(batch / iteration_cpu_s, 3),
        "gflop_per_iteration": round(sum(flops.values()) / 1e9, 3),
        "phases": phases,
        "vision_towers": hooks["towers"],
        "vision_tower_calls": vision_calls,
        "vision_tower_images": vision_images,
        "vision_tower_s": round(vision_s, 4),
        "vision_tower_share": round(vision_s / iteration_s, 4),
        "profiled_iteration_s": round(profiled_s, 4),
        "top_operators": top_operators(prof, top=top, total_s=profiled_s),
    }


def group_phases(phases: list[dict[str, Any]], *, key: str = "seconds") -> dict[str, float]:
    """Seconds (``key``: ``seconds`` wall-clock, ``cpu_s`` CPU) per coarse phase: generation, scoring (actor /
    reference log-probs, RM-V, CM-V), critic values (in the rollout; with ``fused_critics`` the critics' one
    forward pass, with gradients), update (forward + backward + AdamW of actor and critics), other."""
    out: dict[str, float] = defaultdict(float)
    for p in phases:
        name = p["phase"]
        if "generation" in name:
            group = "generation"
        elif name.startswith("rollout:") and ("log-probs" in name or "RM-V" in name):
            group = "scoring (actor + reference log-probs, RM-V, CM-V)"
        elif name == "rollout: critic values" or name.startswith("critics forward, once"):
            group = "critic values"
        elif name.startswith("update:"):
            group = "update (actor + critics: forward, backward, AdamW)"
        else:
            group = "other (encode, decode, GAE, metrics + oracle)"
        out[group] += p[key]
    return dict(out)


def format_profile(result: dict[str, Any]) -> str:
    """The text ``--profile`` prints: per batch, phases and top operators; then per-episode cost by batch."""
    lines = []
    runs = result["runs"]
    for r in runs:
        lines += ["", f"PPO-Lagrangian ({r['layout']}), batch {r['batch']}, {r['response_length']} tokens per answer, "
                      f"{r['threads']} threads: {r['iteration_s']:.3f} s per iteration "
                      f"({r['iteration_cpu_s']:.3f} CPU-s), {r['episodes_per_s']:.2f} episodes/s, "
                      f"{r['gflop_per_iteration']:.1f} GFLOP",
                  f"{'phase':<58} {'s':>7} {'share':>6} {'CPU-s':>7} {'share':>6} {'ms/ep':>7} {'GFLOP':>7} "
                  f"{'GFLOP/CPU-s':>11}"]  # fmt: skip
        for p in r["phases"]:
            rate = p.get("gflop_per_cpu_s")
            rate = "-" if not rate else f"{rate:.1f}"
            lines.append(f"{p['phase']:<58} {p['seconds']:>7.3f} {100 * p['share']:>5.1f}% {p['cpu_s']:>7.3f} "
                         f"{100 * p['cpu_share']:>5.1f}% {p['ms_per_episode']:>7.2f} {p['gflop']:>7.2f} "
                         f"{rate:>11}")  # fmt: skip
        lines.append(f"vision towers ({r['vision_towers']} distinct): {r['vision_tower_calls']:.0f} calls on "
                     f"{r['vision_tower_images']:.0f} pictures, {r['vision_tower_s']:.3f} s "
                     f"({100 * r['vision_tower_share']:.1f}% of the iteration, inside the phases above)")  # fmt: skip
        lines += [f"top operators by self CPU time (profiled iteration {r['profiled_iteration_s']:.3f} s)",
                  f"  {'operator':<56} {'self s':>8} {'share':>6} {'calls':>7}"]  # fmt: skip
        for op in r["top_operators"]:
            lines.append(f"  {op['name'][:56]:<56} {op['self_s']:>8.3f} {100 * op['share']:>5.1f}% {op['calls']:>7}")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        cpu = all("cpu_s" in p for r in (first, last) for p in r["phases"])
        key, total = ("cpu_s", "iteration_cpu_s") if cpu else ("seconds", "iteration_s")
        g0, g1 = group_phases(first["phases"], key=key), group_phases(last["phases"], key=key)
        lines += ["", f"per episode, batch {first['batch']} -> {last['batch']} ({'CPU ' if cpu else ''}ms per episode; "
                      "speed-up = how much cheaper an episode got)",
                  f"{'phase':<58} {first['batch']:>8} {last['batch']:>8} {'speed-up':>9}"]  # fmt: skip
        for key in g0:
            a, b = 1000 * g0[key] / first["batch"], 1000 * g1.get(key, 0.0) / last["batch"]
            lines.append(f"{key:<58} {a:>8.2f} {b:>8.2f} {a / b if b else float('nan'):>8.2f}x")
        a, b = 1000 * first[total] / first["batch"], 1000 * last[total] / last["batch"]
        lines.append(f"{'whole iteration':<58} {a:>8.2f} {b:>8.2f} {a / b:>8.2f}x")
    return "\n".join(lines).lstrip("\n")


def run_profile(
    *, batches=(16, 64), response_length: int = 32, iterations: int = 2, layout: str = "separate",
    sizes: Sizes | None = None, top: int = 15, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`profile_batch` at each of ``batches``."""
    say = progress or (lambda line: print(f"[profile] {line}", file=sys.stderr, flush=True))
    runs = []
    for batch in batches:
        say(f"batch {batch}: build, count FLOPs, time {iterations} iterations, profile one")
        runs.append(profile_batch(batch=batch, response_length=response_length, iterations=iterations, sizes=sizes,
                                  layout=layout, top=top))  # fmt: skip
    return {"runs": runs}


def main(argv: list[str] | None = None) -> int:
    """``python -m saferlhfv.bench --profile [--profile-batches 16 64] [--layout separate|shared] [--json]``."""
    p = argparse.ArgumentParser(prog="python -m saferlhfv.bench --profile", description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="(the mode switch)")
    p.add_argument("--profile-batches", type=int, nargs="+", default=[16, 64], help="rollout batches")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--profile-iterations", type=int, default=2, help="timed iterations per batch")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="separate")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--top", type=int, default=15, help="operators listed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_profile(batches=args.profile_batches, response_length=args.response_length,
                         iterations=args.profile_iterations, layout=args.layout, sizes=Sizes.for_width(args.hidden),
                         top=args.top)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if args.json else format_profile(result))
    return 0
