"""Side by side with the peers: ``python -m saferlhfv.bench --peers`` (minutes; a benchmark, not a test).

Two comparisons, each run in one sitting with ours and the peer alternating (ours, peer, ours, peer...),
every run a fresh process with the same torch intra-op thread count (``--threads``; default: the cores
this process may use; ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set to it in every worker):

* **PPO**: whole iterations of our PPO-Lagrangian (six roles; :func:`saferlhfv.bench.ours.ours_ppo`)
  against TRL 0.19.1's ``PPOTrainer`` (four roles; ``peer_trl_ppo.py``) at each rollout batch
  (``--peer-batches``, default 16 and 64), the same decoder (hidden 128, 4 layers by default), response
  length, PPO epochs and prompt length (the peer's random prompts are as long as our rollouts' padded
  prompts, image tokens included). Untrained models on both sides, so every answer runs to the full
  response length. Result: episodes/s (batch / median iteration seconds, over every timed iteration of
  every round) and its spread over rounds.
* **RM-V**: one optimiser step of our RM-V on ``--reward-batch`` preference pairs (pictures, image
  tokens, chat template) against TRL's current ``RewardTrainer`` (``peer_trl_reward.py``) on as many
  pairs of random token sequences as long as ours (and of ``--reward-peer-lengths`` tokens, the issue's
  ~45); both float32 without gradient checkpointing. Result: pairs/s and tokens/s (2 x pairs x length).

FLOPs and utilisation: the first round of each side counts one iteration (one step) with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward and backward; element-wise
work is not counted). The machine's matmul peak "at these shapes" is the best ``torch.mm`` FLOP/s
measured here, with the same threads, among the decoder's linear-layer shapes at the run's token count
(:func:`~saferlhfv.bench.peer_common.decoder_gemm_shapes`). MFU = FLOPs per iteration / median
iteration seconds / that peak: it tells how well each side keeps the cores busy whatever the work per
episode (ours does more per episode: six roles and a vision tower against four text-only roles).

The peers' venvs are built on the first run (:mod:`saferlhfv.bench.venvs`; a few minutes, from the
package registry) and reused after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhfv.bench.ours import LAYOUTS, Sizes
from saferlhfv.bench.peer_common import decoder_gemm_shapes, gemm_peak, parse_result

#: a 1-minute load average at or above this before the sitting gets a warning in the report.
BUSY_LOAD = 1.0

#: targets of issue 18, checked and printed (ours over the peer unless said).
TARGETS = {
    "ppo_episodes_ratio": 1.5,
    "ppo_mfu_ratio": 1.5,
    "reward_tokens_ratio": 1.0,
    "ours_batch_scaling": 1.8,
}


@dataclass
class PeerBenchConfig:
    """What ``--peers`` measures (sizes in tokens, times in seconds)."""

    #: rollout batches of the PPO comparison (episodes per iteration; one minibatch each).
    batches: tuple[int, ...] = (16, 64)
    #: tokens sampled per answer (every answer runs to it: untrained models).
    response_length: int = 32
    #: PPO epochs per iteration.
    epochs: int = 1
    #: timed iterations (PPO) per run, after the FLOP-counted one and a warm-up.
    iterations: int = 3
    #: alternations ours / peer per batch (and for RM-V).
    rounds: int = 2
    #: the decoder size of both sides.
    sizes: Sizes = field(default_factory=Sizes)
    #: torch intra-op threads of every worker (0: the cores this process may use).
    threads: int = 0
    #: our role layouts to run (``separate``: six models; ``shared``: one base + LoRA adapters).
    layouts: tuple[str, ...] = ("separate", "shared")
    #: preference pairs per RM-V step.
    reward_batch: int = 16
    #: timed RM-V steps per run.
    reward_steps: int = 8
    #: the RewardTrainer also at these sequence lengths (besides ours).
    reward_peer_lengths: tuple[int, ...] = (45,)
    #: run the PPO / RM-V comparisons.
    ppo: bool = True
    reward: bool = True
    #: the peers' venv folder (default: :func:`saferlhfv.bench.venvs.cache_root`).
    venvs: Path | None = None
    #: the longest one worker may run, in seconds.
    timeout_s: float = 1200


def _threads(cfg: PeerBenchConfig) -> int:
    from saferlhfv.threads import available_cores

    return cfg.threads or available_cores()


def worker_env(*, threads: int, artifacts: Path | None = None, peer: bool = False) -> dict[str, str]:
    """The environment of a worker: fixed threads, offline hubs; ours gets an empty artifact cache.

    A peer's environment has no ``PYTHONPATH`` (nothing of ours leaks into its venv).
    """
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})  # fmt: skip
    if artifacts is not None:
        env["SAFERLHFV_ARTIFACTS"] = str(artifacts)
    if peer:
        env.pop("PYTHONPATH", None)
    return env


def run_worker(cmd: list[str], *, env: dict[str, str], what: str, timeout_s: float) -> dict[str, Any]:
    """Run one worker process and return its result line's object.

    Raises:
        PeerOutputError: it exited non-zero or printed no result line (the message quotes its stderr).
    """
    from saferlhfv.bench.peer_common import PeerOutputError

    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise PeerOutputError(f"the {what} ran past {timeout_s:.0f} s: {' '.join(cmd)}") from err
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise PeerOutputError(f"the {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return parse_result(proc.stdout, stderr=proc.stderr, what=what)


def ours_command(kind: str, *, sizes: Sizes, threads: int, opts: dict[str, Any]) -> list[str]:
    """``python -m saferlhfv.bench.ours KIND ...`` with ``opts`` as ``--key value`` (``True``: a bare flag)."""
    return [sys.executable, "-m", "saferlhfv.bench.ours", kind, *sizes.cli(), "--threads", str(threads),
            *_flags(opts)]  # fmt: skip


def peer_command(python: Path, script: Path, *, sizes: Sizes, threads: int, opts: dict[str, Any]) -> list[str]:
    """``<venv python> -P <script> ...`` (``-P``: the bench folder stays off ``sys.path``)."""
    return [str(python), "-P", str(script), *sizes.cli(), "--threads", str(threads), *_flags(opts)]


def _flags(opts: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value not in (False, None):
            out += [flag, str(value)]
    return out


def pooled_rate(runs: list[dict[str, Any]], *, per: float, times_key: str) -> dict[str, float]:
    """Throughput over runs: ``per`` / median of every timed interval pooled; the spread of the runs' own.

    Returns:
        ``rate`` (units per second), ``median_s``, ``low`` / ``high`` (the slowest / fastest run's
        ``per / its median``), ``runs``.
    """
    pooled = [t for r in runs for t in r[times_key]]
    own = [per / statistics.median(r[times_key]) for r in runs]
    med = statistics.median(pooled)
    return {"rate": per / med, "median_s": med, "low": min(own), "high": max(own), "runs": len(runs)}


def _first(runs: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in runs if r.get(key) is not None), None)


def peer_precisions(result: dict[str, Any]) -> list[str]:
    """The precisions the peers' runs report (``"float32"`` or TRL's defaults), sorted, each once;
    ``"unknown"`` for a run that does not say (results from before the peers reported it)."""
    runs = [run for row in result.get("ppo", []) for run in row.get("peer_runs", [])]
    runs += [run for group in result.get("reward", {}).get("peer_runs", {}).values() for run in group]
    return sorted({run.get("precision") or "unknown" for run in runs})


def _peak(*, batch_tokens: int, rows: int, sizes: Sizes, threads: int) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shapes = decoder_gemm_shapes(tokens=batch_tokens, rows=rows, hidden=sizes.hidden,
                                     intermediate=sizes.intermediate, vocab=sizes.vocab)  # fmt: skip
        return gemm_peak(shapes)
    finally:
        torch.set_num_threads(before)


def _summary(runs: list[dict[str, Any]], *, per: float, times_key: str, flops_key: str, peak: float) -> dict[str, Any]:
    """Rates over ``runs`` (wall-clock and, where the runs have them, CPU-time ones), FLOP/s and MFU.

    ``cpu_mfu`` counts the seconds of CPU time divided by the worker's threads as its time: the MFU the run
    would have had if no other job had taken its cores.
    """
    rate = pooled_rate(runs, per=per, times_key=times_key)
    flops = _first(runs, flops_key)
    out = {**rate, "flops": flops, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    cpu_key = times_key.replace("_s", "_cpu_s")
    if all(r.get(cpu_key) for r in runs):  # per CPU-second of the worker (all its threads)
        cpu = pooled_rate(runs, per=per, times_key=cpu_key)
        out.update(cpu_rate=cpu["rate"], cpu_median_s=cpu["median_s"])
    if flops:
        out["flop_per_s"] = flops / rate["median_s"]
        out["mfu"] = out["flop_per_s"] / peak
        if out.get("cpu_median_s"):
            threads = max(r.get("threads") or 1 for r in runs)
            out["cpu_mfu"] = flops / (out["cpu_median_s"] / threads) / peak
    return out


def compare_ppo(cfg: PeerBenchConfig, *, python: Path, script: Path, artifacts: Path,
                progress: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """The PPO comparison, one row per batch (see the module docstring)."""
    threads = _threads(cfg)
    rows = []
    for batch in cfg.batches:
        ours: dict[str, list[dict[str, Any]]] = {layout: [] for layout in cfg.layouts}
        peer: list[dict[str, Any]] = []
        prompt = None
        for rnd in range(cfg.rounds):
            count = rnd == 0
            for layout in cfg.layouts:
                progress(f"PPO batch {batch}, round {rnd + 1}/{cfg.rounds}: ours ({layout})")
                opts = {"batch": batch, "response_length": cfg.response_length, "epochs": cfg.epochs,
                        "iterations": cfg.iterations, "layout": layout, "no_flops": not count}  # fmt: skip
                cmd = ours_command("ppo", sizes=cfg.sizes, threads=threads, opts=opts)
                run = run_worker(cmd, env=worker_env(threads=threads, artifacts=artifacts), what="ours (PPO)",
                                 timeout_s=cfg.timeout_s)  # fmt: skip
                ours[layout].append(run)
                prompt = prompt or run["prompt_tokens"]
                progress(f"  {run['episodes_per_s']:.2f} episodes/s (prompt {run['prompt_tokens']} tokens)")
            progress(f"PPO batch {batch}, round {rnd + 1}/{cfg.rounds}: TRL PPOTrainer")
            opts = {"batch": batch, "response_length": cfg.response_length, "epochs": cfg.epochs,
                    "iterations": cfg.iterations, "prompt_length": prompt, "no_flops": not count}  # fmt: skip
            cmd = peer_command(python, script, sizes=cfg.sizes, threads=threads, opts=opts)
            run = run_worker(cmd, env=worker_env(threads=threads, peer=True), what="TRL PPO peer",
                             timeout_s=cfg.timeout_s)  # fmt: skip
            peer.append(run)
            progress(f"  {run['episodes_per_s']:.2f} episodes/s")
        progress(f"PPO batch {batch}: measuring the matmul peak at these shapes")
        peak = _peak(batch_tokens=batch * (prompt + cfg.response_length), rows=batch, sizes=cfg.sizes, threads=threads)
        kw = {"per": batch, "times_key": "iteration_s", "flops_key": "flops_per_iteration",
              "peak": peak["peak_flop_per_s"]}  # fmt: skip
        row = {"batch": batch, "prompt_tokens": prompt, "response_tokens": cfg.response_length, "epochs": cfg.epochs,
               "peak": peak, "peer": _summary(peer, **kw), "peer_runs": peer,
               "ours": {layout: _summary(runs, **kw) for layout, runs in ours.items()},
               "ours_runs": ours}  # fmt: skip
        for side in [row["peer"], *row["ours"].values()]:
            side["flops_per_episode"] = side["flops"] / batch if side["flops"] else None
        for s in row["ours"].values():
            s["episodes_ratio"] = s["rate"] / row["peer"]["rate"]
            if s.get("cpu_rate") and row["peer"].get("cpu_rate"):
                s["cpu_episodes_ratio"] = s["cpu_rate"] / row["peer"]["cpu_rate"]
            if s.get("cpu_mfu") and row["peer"].get("cpu_mfu"):
                s["cpu_mfu_ratio"] = s["cpu_mfu"] / row["peer"]["cpu_mfu"]
            if s.get("mfu") and row["peer"].get("mfu"):
                s["mfu_ratio"] = s["mfu"] / row["peer"]["mfu"]
                s["flops_per_episode_ratio"] = s["flops_per_episode"] / row["peer"]["flops_per_episode"]
        rows.append(row)
    return rows


def compare_reward(cfg: PeerBenchConfig, *, python: Path, script: Path, artifacts: Path,
                   progress: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The RM-V comparison (see the module docstring)."""
    threads = _threads(cfg)
    ours: list[dict[str, Any]] = []
    peers: dict[int, list[dict[str, Any]]] = {}
    length = None
    for rnd in range(cfg.rounds):
        count = rnd == 0
        progress(f"RM-V, round {rnd + 1}/{cfg.rounds}: ours ({cfg.reward_batch} pairs)")
        opts = {"batch": cfg.reward_batch, "iterations": cfg.reward_steps, "no_flops": not count}
        cmd = ours_command("reward", sizes=cfg.sizes, threads=threads, opts=opts)
        run = run_worker(cmd, env=worker_env(threads=threads, artifacts=artifacts), what="ours (RM-V)",
                         timeout_s=cfg.timeout_s)  # fmt: skip
        ours.append(run)
        length = length or run["sequence_tokens_first"]
        progress(f"  {run['pairs_per_s']:.1f} pairs/s, {run['tokens_per_s']:.0f} tokens/s ({length} tokens)")
        for n in (length, *cfg.reward_peer_lengths):
            progress(f"RM-V, round {rnd + 1}/{cfg.rounds}: TRL RewardTrainer at {n} tokens")
            opts = {"batch": cfg.reward_batch, "sequence_length": n, "steps": cfg.reward_steps}
            cmd = peer_command(python, script, sizes=cfg.sizes, threads=threads, opts=opts)
            run = run_worker(cmd, env=worker_env(threads=threads, peer=True), what="TRL RewardTrainer peer",
                             timeout_s=cfg.timeout_s)  # fmt: skip
            peers.setdefault(n, []).append(run)
            progress(f"  {run['pairs_per_s']:.1f} pairs/s, {run['tokens_per_s']:.0f} tokens/s")
    progress("RM-V: measuring the matmul peak at these shapes")
    peak = _peak(batch_tokens=2 * cfg.reward_batch * length, rows=2 * cfg.reward_batch, sizes=cfg.sizes,
                 threads=threads)  # fmt: skip
    tokens = statistics.mean(r["tokens_per_step"] for r in ours)
    kw = {"times_key": "step_s", "flops_key": "flops_per_step", "peak": peak["peak_flop_per_s"]}
    out = {"batch_pairs": cfg.reward_batch, "sequence_tokens": length, "peak": peak,
           "ours": _summary(ours, per=cfg.reward_batch, **kw), "ours_runs": ours,
           "peer": {}, "peer_runs": peers}  # fmt: skip
    out["ours"]["tokens_per_s"] = tokens / out["ours"]["median_s"]
    out["ours"]["encode_s"] = statistics.median(r["encode_s"] for r in ours)
    out["ours"]["tokens_per_s_with_encoding"] = tokens / (out["ours"]["median_s"] + out["ours"]["encode_s"])
    if out["ours"].get("cpu_median_s"):
        out["ours"]["tokens_per_cpu_s"] = tokens / out["ours"]["cpu_median_s"]
    for n, runs in peers.items():
        s = _summary(runs, per=cfg.reward_batch, **kw)
        s["tokens_per_s"] = 2 * cfg.reward_batch * n / s["median_s"]
        s["ours_tokens_ratio"] = out["ours"]["tokens_per_s"] / s["tokens_per_s"]
        s["ours_pairs_ratio"] = out["ours"]["rate"] / s["rate"]
        if s.get("cpu_median_s") and out["ours"].get("tokens_per_cpu_s"):
            s["tokens_per_cpu_s"] = 2 * cfg.reward_batch * n / s["cpu_median_s"]
            s["ours_cpu_tokens_ratio"] = out["ours"]["tokens_per_cpu_s"] / s["tokens_per_cpu_s"]
        out["peer"][str(n)] = s
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's targets against the measured numbers: one row each (``what``, ``value``, ``target``, ``met``)."""
    rows = []
    ppo = {r["batch"]: r for r in result.get("ppo", [])}
    for batch, r in ppo.items():
        for layout, s in r["ours"].items():
            rows.append({"what": f"PPO episodes/s, ours ({layout}) / TRL, batch {batch}", "value": s["episodes_ratio"],
                         "target": TARGETS["ppo_episodes_ratio"]})  # fmt: skip
            if "cpu_episodes_ratio" in s:
                rows.append({"what": "  the same per CPU-second", "value": s["cpu_episodes_ratio"],
                             "target": TARGETS["ppo_episodes_ratio"]})  # fmt: skip
            if "mfu_ratio" in s:
                rows.append({"what": f"MFU, ours ({layout}) / TRL, batch {batch}", "value": s["mfu_ratio"],
                             "target": TARGETS["ppo_mfu_ratio"]})  # fmt: skip
            if "cpu_mfu_ratio" in s:
                rows.append({"what": "  the same per CPU-second", "value": s["cpu_mfu_ratio"],
                             "target": TARGETS["ppo_mfu_ratio"]})  # fmt: skip
    if 16 in ppo and 64 in ppo:
        for layout in ppo[64]["ours"]:
            if layout in ppo[16]["ours"]:
                value = ppo[64]["ours"][layout]["rate"] / ppo[16]["ours"][layout]["rate"]
                rows.append({"what": f"ours ({layout}) episodes/s, batch 64 / batch 16", "value": value,
                             "target": TARGETS["ours_batch_scaling"]})  # fmt: skip
                a, b = ppo[16]["ours"][layout].get("cpu_rate"), ppo[64]["ours"][layout].get("cpu_rate")
                if a and b:
                    rows.append({"what": "  the same per CPU-second", "value": b / a,
                                 "target": TARGETS["ours_batch_scaling"]})  # fmt: skip
        value = ppo[64]["peer"]["rate"] / ppo[16]["peer"]["rate"]
        rows.append({"what": "TRL PPOTrainer episodes/s, batch 64 / batch 16 (for reference)", "value": value,
                     "target": None})  # fmt: skip
        a, b = ppo[16]["peer"].get("cpu_rate"), ppo[64]["peer"].get("cpu_rate")
        if a and b:
            rows.append({"what": "  the same per CPU-second", "value": b / a, "target": None})
    reward = result.get("reward")
    if reward:
        same = reward["peer"].get(str(reward["sequence_tokens"]))
        if same:
            rows.append({"what": f"RM-V tokens/s, ours / RewardTrainer (both {reward['sequence_tokens']} tokens)",
                         "value": same["ours_tokens_ratio"], "target": TARGETS["reward_tokens_ratio"]})  # fmt: skip
            if "ours_cpu_tokens_ratio" in same:
                rows.append({"what": "  the same per CPU-second", "value": same["ours_cpu_tokens_ratio"],
                             "target": TARGETS["reward_tokens_ratio"]})  # fmt: skip
        for n, s in reward["peer"].items():
            if s is not same:
                rows.append({"what": f"RM-V tokens/s, ours / RewardTrainer at {n} tokens",
                             "value": s["ours_tokens_ratio"], "target": TARGETS["reward_tokens_ratio"]})  # fmt: skip
    for row in rows:
        row["met"] = None if row["target"] is None else bool(row["value"] >= row["target"])
    return rows


def run_peers(cfg: PeerBenchConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the peers' venvs if needed, run both comparisons, return everything measured (see :func:`format_peers`)."""

    import torch

    from saferlhfv.bench.venvs import ensure_venv, peer_envs

    say = progress or (lambda line: print(f"[peers {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True))
    envs = peer_envs()
    wanted = [k for k, on in (("trl_ppo", cfg.ppo), ("trl_reward", cfg.reward)) if on]
    pythons = {k: ensure_venv(envs[k], root=cfg.venvs, progress=say) for k in wanted}
    start = time.time()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    result: dict[str, Any] = {
        "threads": _threads(cfg),
        "machine": {"cpus": os.cpu_count(), "processor": cpu_model(),
                    "torch": torch.__version__, "load_average_before": load_before},  # fmt: skip
        "config": {"batches": list(cfg.batches), "response_length": cfg.response_length, "epochs": cfg.epochs,
                   "iterations": cfg.iterations, "rounds": cfg.rounds, "sizes": cfg.sizes.__dict__,
                   "layouts": list(cfg.layouts), "reward_batch": cfg.reward_batch, "reward_steps": cfg.reward_steps},
        "peers": {k: envs[k].label for k in wanted},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="saferlhfv-peers-") as tmp:
        artifacts = Path(tmp) / "artifacts"  # empty: ours runs untrained models, every answer to the end
        if cfg.ppo:
            result["ppo"] = compare_ppo(cfg, python=pythons["trl_ppo"], script=envs["trl_ppo"].script_path(),
                                        artifacts=artifacts, progress=say)  # fmt: skip
        if cfg.reward:
            result["reward"] = compare_reward(cfg, python=pythons["trl_reward"],
                                              script=envs["trl_reward"].script_path(), artifacts=artifacts,
                                              progress=say)  # fmt: skip
    result["seconds"] = round(time.time() - start, 1)
    result["machine"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["targets"] = targets(result)
    return result


def _g(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def cpu_model() -> str:
    """The CPU's model name and its vector / matrix extensions (``/proc/cpuinfo`` on Linux, else
    ``platform.processor()``), e.g. ``"Intel(R) Xeon(R) Processor (avx2, avx512f, avx512_bf16, amx_bf16)"``: the
    ratios depend on them (TRL's default bf16 is 10x slower than float32 without bf16 instructions)."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    name = name or platform.processor() or platform.machine()
    return f"{name} ({', '.join(extensions)})" if extensions else name


def format_peers(result: dict[str, Any]) -> str:
    """The side-by-side table ``--peers`` prints."""
    load = (result["machine"].get("load_average_before") or [None])[0]
    lines = [f"saferlhfv vs peers, {result['threads']} threads, one sitting of {result.get('seconds', 0):.0f} s "
             f"(1-minute load average before it: {_g(load, '.2f')})",
             f"CPU: {result['machine'].get('processor', '?')}"]  # fmt: skip
    sizes = result["config"]["sizes"]
    precisions = peer_precisions(result)
    lines.append(f"decoder: hidden {sizes['hidden']}, {sizes['layers']} layers, {sizes['heads']} heads, MLP "
                 f"{sizes['intermediate']}, vocabulary {sizes['vocab']}; untrained models; ours float32, "
                 f"peers {' / '.join(precisions) or '-'}")  # fmt: skip
    if any(p != "float32" for p in precisions):
        lines.append("WARNING: a peer did not train in float32 (TRL defaults to bf16 autocast, 10x slower on a CPU "
                     "without bf16 instructions, faster on one with them): the ratios compare precisions, "
                     "not code")  # fmt: skip
    if load is not None and load >= BUSY_LOAD:
        lines.append(f"WARNING: the machine was busy (load {load:.2f} before the sitting): beside another CPU-bound "
                     "process, workers of more than one thread stall at every parallel region; compare ratios, or run "
                     "with --threads 1")  # fmt: skip
    if "ppo" in result:
        lines += ["", "PPO: whole iterations (rollout + scoring + update), episodes/s = batch / median iteration s",
                  "(ep/CPU-s: episodes per second of the worker's CPU time, steadier on a shared machine)",
                  f"{'batch':>5} {'system':<32} {'episodes/s':>10} {'(runs)':>13} {'ep/CPU-s':>8} {'GFLOP/ep':>9} "
                  f"{'GFLOP/s':>8} {'MFU':>6} {'x eps':>6} {'x CPU':>6} {'x MFU':>6}"]  # fmt: skip
        for r in result["ppo"]:
            peak = r["peak"]["peak_flop_per_s"]
            sides = [("TRL 0.19.1 PPOTrainer (4 roles)", r["peer"], None)]
            sides += [(f"saferlhfv PPO-Lag, {lay} (6)", s, s) for lay, s in r["ours"].items()]
            for name, s, mine in sides:
                spread = f"{s['low']:.1f}-{s['high']:.1f}"
                fpe = s["flops_per_episode"] / 1e9 if s.get("flops_per_episode") else None
                fps = s["flop_per_s"] / 1e9 if s.get("flop_per_s") else None
                mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") else "-"
                xe = f"{mine['episodes_ratio']:.2f}" if mine else ""
                xm = f"{mine['mfu_ratio']:.2f}" if mine and "mfu_ratio" in mine else ""
                xc = f"{mine['cpu_episodes_ratio']:.2f}" if mine and "cpu_episodes_ratio" in mine else ""
                cpu = f"{s['cpu_rate']:.2f}" if s.get("cpu_rate") else "-"
                lines.append(f"{r['batch']:>5} {name:<32} {s['rate']:>10.2f} {spread:>13} {cpu:>8} {_g(fpe):>9} "
                             f"{_g(fps):>8} {mfu:>6} {xe:>6} {xc:>6} {xm:>6}")  # fmt: skip
            lines.append(f"      (prompt {r['prompt_tokens']} + response {r['response_tokens']} tokens, "
                         f"{r['epochs']} epoch; matmul peak at these shapes {peak / 1e9:.1f} GFLOP/s)")  # fmt: skip
    if "reward" in result:
        rw = result["reward"]
        o = rw["ours"]
        lines += ["", f"RM-V / reward model: one optimiser step on {rw['batch_pairs']} pairs (2 x pairs sequences)",
                  f"{'system':<40} {'tokens':>6} {'pairs/s':>8} {'tokens/s':>9} {'tok/CPU-s':>9} {'GFLOP/s':>8} "
                  f"{'MFU':>6} {'ours x tok/s':>12} {'x CPU':>6}"]  # fmt: skip
        mfu = f"{100 * o['mfu']:.1f}%" if o.get("mfu") else "-"
        fps = o["flop_per_s"] / 1e9 if o.get("flop_per_s") else None
        cpu = f"{o['tokens_per_cpu_s']:.0f}" if o.get("tokens_per_cpu_s") else "-"
        lines.append(f"{'saferlhfv RM-V (36 image tokens)':<40} {rw['sequence_tokens']:>6} {o['rate']:>8.1f} "
                     f"{o['tokens_per_s']:>9.0f} {cpu:>9} {_g(fps):>8} {mfu:>6}")  # fmt: skip
        for n, s in rw["peer"].items():
            mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") else "-"
            fps = s["flop_per_s"] / 1e9 if s.get("flop_per_s") else None
            cpu = f"{s['tokens_per_cpu_s']:.0f}" if s.get("tokens_per_cpu_s") else "-"
            xc = f"{s['ours_cpu_tokens_ratio']:.2f}" if s.get("ours_cpu_tokens_ratio") else ""
            lines.append(f"{'TRL 1.16 RewardTrainer (text)':<40} {n:>6} {s['rate']:>8.1f} {s['tokens_per_s']:>9.0f} "
                         f"{cpu:>9} {_g(fps):>8} {mfu:>6} {s['ours_tokens_ratio']:>12.2f} {xc:>6}")  # fmt: skip
        lines.append(f"      (ours' processor takes {1000 * o['encode_s']:.0f} ms more per batch to encode pictures "
                     f"and text: {o['tokens_per_s_with_encoding']:.0f} tokens/s with it; "
                     f"matmul peak {rw['peak']['peak_flop_per_s'] / 1e9:.1f} GFLOP/s)")  # fmt: skip
    if result.get("targets"):
        lines += ["", "targets (issue 18)"]
        for t in result["targets"]:
            verdict = "" if t["met"] is None else ("met" if t["met"] else "NOT met")
            target = "" if t["target"] is None else f">= {t['target']:g}"
            lines.append(f"  {t['what']:<66} {t['value']:>6.2f}  {target:<7} {verdict}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--peers`` options."""
    g = parser.add_argument_group("peers (python -m saferlhfv.bench --peers)")
    g.add_argument("--peer-batches", type=int, nargs="+", default=[16, 64], help="PPO rollout batches")
    g.add_argument("--response-length", type=int, default=32, help="tokens per answer")
    g.add_argument("--epochs", type=int, default=1, help="PPO epochs per iteration")
    g.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per run")
    g.add_argument("--rounds", type=int, default=2, help="ours / peer alternations")
    g.add_argument("--threads", type=int, default=0, help="threads of every worker (default: the usable cores)")
    g.add_argument(
        "--layouts", nargs="+", choices=sorted(LAYOUTS), default=["separate", "shared"], help="our role layouts"
    )
    g.add_argument("--hidden", type=int, default=128, help="decoder width (heads and MLP follow the tiny preset)")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--reward-batch", type=int, default=16, help="pairs per RM-V step")
    g.add_argument("--reward-steps", type=int, default=8, help="timed RM-V steps per run")
    g.add_argument("--reward-peer-lengths", type=int, nargs="*", default=[45],
                   help="the RewardTrainer also at these sequence lengths")  # fmt: skip
    g.add_argument("--only", choices=("ppo", "reward"), help="run one comparison only")
    g.add_argument("--venvs", type=Path, help="the peers' venv folder (default ~/.cache/saferlhfv/peer-venvs)")
    g.add_argument("--json", action="store_true", help="print JSON instead of the table")
    g.add_argument("--out", type=Path, help="also write the JSON here")


def config_from_args(args: argparse.Namespace) -> PeerBenchConfig:
    """The :class:`PeerBenchConfig` the command line asks for."""
    sizes = Sizes.for_width(args.hidden, layers=args.layers)
    return PeerBenchConfig(
        batches=tuple(args.peer_batches), response_length=args.response_length, epochs=args.epochs,
        iterations=args.iterations, rounds=args.rounds, sizes=sizes, threads=args.threads, layouts=tuple(args.layouts),
        reward_batch=args.reward_batch, reward_steps=args.reward_steps,
        reward_peer_lengths=tuple(args.reward_peer_lengths), ppo=args.only in (None, "ppo"),
        reward=args.only in (None, "reward"), venvs=args.venvs,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m saferlhfv.bench --peers [options]``."""
    from saferlhfv.bench.venvs import PeerEnvError

    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench --peers", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="(the mode switch)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        result = run_peers(config_from_args(args))
    except PeerEnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if args.json else format_peers(result))
    return 0
