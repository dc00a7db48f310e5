"""Several jobs at once on one machine: their aggregate throughput against one job alone.

``python -m saferlhfv.bench --preset tiny --parts concurrent``. For each number of jobs ``n`` in
``jobs`` (1, 2, 3), ``n`` worker processes each build the preset's VLM, register as busy jobs
(:func:`saferlhfv.threads.busy`), wait until all are ready, then run ``rounds`` rounds of one
SFT optimiser step plus one sampled generation of ``new_tokens`` tokens on a batch of
``batch_size``. Aggregate throughput = ``n * rounds / (last end - first start)``; the ratio is
that over the throughput of one job alone under the same policy. Measured with the thread
policy (``on``) and without it (``off``: torch's default, every job uses every core). The
workers' environment has no ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``SAFERLHFV_THREADS``:
the policy is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from saferlhfv.config import Config
from saferlhfv.threads import USER_VARIABLES, available_cores

__all__ = ["concurrent_jobs"]


def _work(config: Path, rounds: int, batch_size: int, new_tokens: int, folder: Path, index: int) -> None:
    """One worker: build, say ready, wait for the start signal, run the rounds, write the times."""
    import torch

    from saferlhfv.bench.measure import _corpus
    from saferlhfv.config import load_config
    from saferlhfv.data.world import sft_dataset
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.generation import encode_prompts, sampling_kwargs
    from saferlhfv.threads import busy, rebalance

    cfg = load_config(config)
    model, processor = load_vlm(cfg.model, _corpus(cfg), seed=cfg.seed)
    sft = sft_dataset(cfg.data).select(range(batch_size))
    images, questions = list(sft["image"]), list(sft["question"])
    train = encode_prompts(processor, images, questions, list(sft["response"]), padding_side="right")
    labels = train["input_ids"].masked_fill(train["attention_mask"] == 0, -100)
    prompts = encode_prompts(processor, images, questions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one_round():
        model.train()
        model(**train, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            model.generate(**prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **sampling_kwargs())

    with busy():
        one_round()  # warm-up
        (folder / f"ready-{index}").touch()
        while not (folder / "go").exists():
            time.sleep(0.01)
        used = rebalance(force=True)  # every worker is registered by now
        start = time.time()
        for _ in range(rounds):
            rebalance()
            one_round()
        end = time.time()
    (folder / f"times-{index}.json").write_text(json.dumps({"start": start, "end": end, "threads": used}))


def _run_jobs(cfg: Config, n: int, policy: str, *, rounds: int, batch_size: int, new_tokens: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    env["SAFERLHFV_THREAD_POLICY"] = policy
    with tempfile.TemporaryDirectory(prefix="saferlhfv-concurrent-") as tmp:
        folder = Path(tmp)
        env["SAFERLHFV_WORKERS_DIR"] = str(folder / "workers")  # these jobs count each other only
        cfg.save(folder / "config.yaml")  # the workers read the same config, overrides included
        args = [sys.executable, "-m", "saferlhfv.bench.concurrent", "--worker", "--config", str(folder / "config.yaml"),
                "--rounds", str(rounds), "--batch-size", str(batch_size), "--new-tokens", str(new_tokens),
                "--folder", str(folder)]  # fmt: skip
        procs = [subprocess.Popen([*args, "--index", str(i)], env=env) for i in range(n)]
        try:
            while len(list(folder.glob("ready-*"))) < n:
                failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a concurrent-bench worker failed (exit code {failed[0]})")
                time.sleep(0.05)
            (folder / "go").touch()
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            raise RuntimeError(f"a concurrent-bench worker failed (exit codes {codes})")
        times = [json.loads((folder / f"times-{i}.json").read_text()) for i in range(n)]
    wall = max(t["end"] for t in times) - min(t["start"] for t in times)
    return {
        "jobs": n,
        "policy": policy,
        "threads_per_job": sorted({t["threads"] for t in times}),
        "round_s": round(wall / rounds, 4),
        "rounds_per_s": round(n * rounds / wall, 3),
    }


def concurrent_jobs(
    cfg: Config,
    *,
    jobs: tuple[int, ...] = (1, 2, 3),
    policies: tuple[str, ...] = ("on", "off"),
    rounds: int = 30,
    batch_size: int = 8,
    new_tokens: int = 16,
) -> dict[str, Any]:
    """Run ``n`` jobs at once for each ``n`` in ``jobs`` and policy in ``policies``.

    Returns:
        ``cores``, ``rounds``, and ``runs``: one dict per (policy, n) with ``threads_per_job``,
        ``round_s`` (wall seconds per round of the slowest job), ``rounds_per_s`` (aggregate) and
        ``ratio`` (aggregate throughput / one job alone under the same policy, when ``1`` is in
        ``jobs``); ``alone_on_over_off`` (one job's speed with the policy / without it).
    """
    runs = []
    for policy in policies:
        alone = None
        for n in jobs:
            run = _run_jobs(cfg, n, policy, rounds=rounds, batch_size=batch_size, new_tokens=new_tokens)
            alone = run["rounds_per_s"] if n == 1 else alone
            run["ratio"] = round(run["rounds_per_s"] / alone, 3) if alone else None
            runs.append(run)
    singles = {r["policy"]: r["rounds_per_s"] for r in runs if r["jobs"] == 1}
    out = {"cores": available_cores(), "rounds": rounds, "batch_size": batch_size, "new_tokens": new_tokens,
           "runs": runs}  # fmt: skip
    if {"on", "off"} <= singles.keys():
        out["alone_on_over_off"] = round(singles["on"] / singles["off"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """The worker entry point (the bench starts it; not meant to be run by hand)."""
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench.concurrent")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--config", type=Path, required=True, help="a saved config (YAML)")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    _work(args.config, args.rounds, args.batch_size, args.new_tokens, args.folder, args.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
