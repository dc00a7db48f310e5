"""Our side of the peer benchmark: whole PPO-Lagrangian iterations and RM-V steps, one result line per run.

``python -m saferlhfv.bench.ours ppo --batch 16 --response-length 32`` (and ``reward``) is what
:mod:`saferlhfv.bench.peers` and :mod:`saferlhfv.bench.scaling` start, one fresh process per
measurement, with the same thread count as the peer's process; it prints one line that
:func:`saferlhfv.bench.peer_common.parse_result` reads.

PPO (:func:`ours_ppo`): the real trainer (:func:`saferlhfv.train.ppo.make_trainer`, six roles) on
untrained copies of the preset's VLM (:func:`saferlhfv.bench.measure._untrained_upstream`), so every
answer runs to ``ppo.max_new_tokens``, as the peer's do; ``ppo.rollout_batch_size = ppo.batch_size =
batch`` (one minibatch per epoch, like the peer's ``num_mini_batches=1``). Iteration 1 runs under
``FlopCounterMode`` (its FLOPs), iteration 2 is a warm-up, iterations 3.. are timed (seconds each).

RM-V (:func:`ours_reward`): forward + backward + AdamW of a :class:`~saferlhfv.models.score.ScoreModel` on
``batch`` preference pairs of the mini world (what ``--parts score`` measures) with the RM-V stage's own
loss, which reads each pair's shared picture and question once
(:meth:`~saferlhfv.models.score.ScoreModel.pair_end_scores`); each step on a different, already encoded
batch; the processor's encoding of a batch is timed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the PPO role layouts ours can run in, as config overrides.
LAYOUTS: dict[str, dict[str, Any]] = {
    "separate": {"model.lora.enabled": False, "ppo.shared_base": False},
    "shared": {"model.lora.enabled": True, "ppo.shared_base": True},
}


@dataclass(frozen=True)
class Sizes:
    """The decoder size both sides build (the tiny preset's by default)."""

    #: width of the decoder (``hidden_size``).
    hidden: int = 128
    #: decoder layers.
    layers: int = 4
    #: attention heads (key / value heads as many).
    heads: int = 4
    #: MLP width.
    intermediate: int = 344
    #: vocabulary (the tiny tokenizer's size; the peer's word tokenizer is built to match).
    vocab: int = 1024

    @classmethod
    def for_width(cls, hidden: int, *, layers: int = 4) -> Sizes:
        """The tiny preset's proportions at another width: 32-wide heads, MLP 344/128 of the width (even)."""
        intermediate = 2 * round(hidden * 344 / 128 / 2)
        return cls(hidden=hidden, layers=layers, heads=max(1, hidden // 32), intermediate=intermediate)

    def overrides(self) -> dict[str, Any]:
        """Our config overrides for this size (the vocabulary is the tiny tokenizer's own)."""
        return {
            "model.tiny_hidden_size": self.hidden,
            "model.tiny_layers": self.layers,
            "model.tiny_heads": self.heads,
            "model.tiny_intermediate_size": self.intermediate,
            "model.tiny_vocab_size": self.vocab,
        }

    def cli(self) -> list[str]:
        """The same size as command-line options (``--hidden 128 ...``: ours' and the peers' scripts)."""
        return ["--hidden", str(self.hidden), "--layers", str(self.layers), "--heads", str(self.heads),
                "--intermediate", str(self.intermediate), "--vocab", str(self.vocab)]  # fmt: skip


def ppo_config(
    *, batch: int, response_length: int, epochs: int, sizes: Sizes, layout: str, preset: str = "tiny", extra=()
):
    """Our config for one PPO measurement: ``batch`` episodes per iteration in one minibatch."""
    from saferlhfv.config import apply_overrides, load_config

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    cfg = load_config(preset, overrides=list(extra))
    return apply_overrides(
        cfg,
        {
            **sizes.overrides(),
            **LAYOUTS[layout],
            "model.tiny_max_positions": max(256, 128 + response_length),
            "ppo.rollout_batch_size": batch,
            "ppo.batch_size": batch,
            "ppo.max_new_tokens": response_length,
            "ppo.ppo_epochs": epochs,
            "ppo.save_every": 0,
        },
    )


def build_trainer(cfg, folder: Path, *, layout: str):
    """The PPO trainer of ``cfg`` on untrained upstream models saved under ``folder`` (answers run to the end)."""
    from saferlhfv.bench.measure import _untrained_upstream
    from saferlhfv.config import apply_overrides
    from saferlhfv.train.ppo import make_trainer

    # the upstream is built from a plain policy (as role_memory does); with lora=True RM-V / CM-V become
    # adapters of rank model.lora.r on it, what the shared layout loads
    plain = apply_overrides(cfg, {"model.lora.enabled": False})
    upstream = _untrained_upstream(plain, folder / "upstream", lora=layout == "shared")
    return make_trainer(cfg, **upstream, out_dir=folder / "ppo")


def watch_shapes(trainer) -> list[tuple[int, int, float]]:
    """Record each rollout's ``(rows, padded length, mean real response tokens)`` (wraps the instance's hook)."""
    shapes: list[tuple[int, int, float]] = []
    inner = trainer.rollout

    def rollout(rows):
        ro = inner(rows)
        shapes.append((int(ro.input_ids.shape[0]), int(ro.input_ids.shape[1]), float(ro.mask.sum(1).float().mean())))
        return ro

    trainer.rollout = rollout
    return shapes


def ours_ppo(
    *,
    batch: int = 16,
    response_length: int = 32,
    epochs: int = 1,
    iterations: int = 3,
    sizes: Sizes = Sizes(),
    layout: str = "separate",
    count: bool = True,
    preset: str = "tiny",
) -> dict[str, Any]:
    """Time whole PPO-Lagrangian iterations of ours (see the module docstring); the result line's fields.

    Returns:
        ``episodes_per_s`` (batch / median iteration seconds), ``iteration_s`` (each timed one),
        ``prompt_tokens`` (the rollouts' padded prompt length, image tokens included),
        ``response_tokens`` (mean real tokens per answer), ``flops_per_iteration`` / ``flops_per_episode``,
        ``peak_rss_mb`` (this process's peak resident memory, MiB), ``build_s``.
    """
    import torch

    import saferlhfv.train.ppo  # noqa: F401  (imported before the memory baseline, as the peer's trl is)
    from saferlhfv.bench.peer_common import StepClock, count_flops, peak_rss_mb, rss_mb

    rss_before = rss_mb()
    cfg = ppo_config(batch=batch, response_length=response_length, epochs=epochs, sizes=sizes, layout=layout,
                     preset=preset)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="saferlhfv-ours-") as tmp:
        start = time.perf_counter()
        trainer = build_trainer(cfg, Path(tmp), layout=layout)
        build_s = time.perf_counter() - start
        shapes = watch_shapes(trainer)
        flops = None
        if count:
            _, flops = count_flops(trainer.step)
        trainer.step()  # warm-up
        clock = StepClock()
        clock.start()
        for _ in range(iterations):
            trainer.step()
            clock.tick()
    times = clock.intervals()
    step = statistics.median(times)
    rows, length, real = shapes[-1]
    out = {
        "system": f"saferlhfv PPO-Lagrangian ({layout})",
        "kind": "ppo",
        "layout": layout,
        "roles": 6,
        "batch": batch,
        "prompt_tokens": round(statistics.mean(s[1] for s in shapes) - response_length),
        "response_tokens": round(statistics.mean(s[2] for s in shapes), 2),
        "max_response_tokens": response_length,
        "epochs": epochs,
        "iteration_s": [round(t, 4) for t in times],
        "iteration_cpu_s": [round(t, 4) for t in clock.cpu_intervals()],
        "median_iteration_s": round(step, 4),
        "episodes_per_s": round(batch / step, 3),
        "build_s": round(build_s, 2),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_build_mb": round(rss_before, 1),
        "sizes": sizes.__dict__,
    }
    if flops is not None:
        out["flops_per_iteration"] = flops
        out["flops_per_episode"] = flops / batch
    return out


def ours_reward(
    *, batch: int = 16, steps: int = 8, sizes: Sizes = Sizes(), count: bool = True, preset: str = "tiny"
) -> dict[str, Any]:
    """Time RM-V optimiser steps on ``batch`` pairs (see the module docstring); the result line's fields.

    Returns:
        ``pairs_per_s`` / ``tokens_per_s`` over the median model step, tokens = ``2 x batch x`` the padded
        length of the pair batch: both sequences of every pair, as the peer's trainer runs them (ours reads
        the shared prompt once, so the model computes fewer positions than that; ``flops_per_step`` counts
        what it computes); ``encode_s`` the median time the processor takes to encode one batch
        (pictures + chat template; the peer's batches come pre-tokenised); ``tokens_per_s_with_encoding``;
        ``flops_per_step``; ``image_tokens`` per sequence.
    """
    import torch

    from saferlhfv.bench.measure import _corpus
    from saferlhfv.bench.peer_common import count_flops, peak_rss_mb
    from saferlhfv.config import apply_overrides, load_config
    from saferlhfv.data import load_preference_data
    from saferlhfv.models.collate import pair_batch
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.score import ScoreModel
    from saferlhfv.train.preference import pair_loss_fn, pair_view

    cfg = apply_overrides(load_config(preset), sizes.overrides())
    backbone, processor = load_vlm(cfg.model, _corpus(cfg), seed=cfg.seed)
    model = ScoreModel(backbone, seed=cfg.seed).train()
    pairs = load_preference_data(cfg.data, "train")
    total = steps + 2
    encoded, encode_s = [], []
    for s in range(total):
        views = [pair_view(pairs[(s * batch + i) % len(pairs)], "reward") for i in range(batch)]
        start = time.perf_counter()
        encoded.append(pair_batch(processor, [v["image"] for v in views], [v["question"] for v in views],
                                  [v["a"] for v in views], [v["b"] for v in views]))  # fmt: skip
        encode_s.append(time.perf_counter() - start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    loss_fn = pair_loss_fn("reward", cfg)  # the RM-V stage's own loss: the shared prompt read once

    def train_step(inputs):
        loss, _ = loss_fn(model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = count_flops(train_step, encoded[0])[1] if count else None
    train_step(encoded[1])  # warm-up
    times, cpu = [], []
    for inputs in encoded[2:]:
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(inputs)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    step = statistics.median(times)
    lengths = [int(b["input_ids"].shape[1]) for b in encoded[2:]]
    tokens = statistics.mean(2 * batch * n for n in lengths)
    enc = statistics.median(encode_s[2:])
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return {
        "system": "saferlhfv RM-V step",
        "kind": "reward",
        "batch_pairs": batch,
        "sequence_tokens": round(statistics.mean(lengths), 1),
        "sequence_tokens_first": int(encoded[0]["input_ids"].shape[1]),
        "image_tokens": int((encoded[0]["input_ids"][0] == image_token).sum()),
        "tokens_per_step": round(tokens, 1),
        "step_s": [round(t, 4) for t in times],
        "step_cpu_s": [round(t, 4) for t in cpu],
        "median_step_s": round(step, 4),
        "pairs_per_s": round(batch / step, 2),
        "tokens_per_s": round(tokens / step, 1),
        "encode_s": round(enc, 4),
        "tokens_per_s_with_encoding": round(tokens / (step + enc), 1),
        "flops_per_step": flops,
        "threads": torch.get_num_threads(),
        "precision": "float32",
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m saferlhfv.bench.ours {ppo,reward} ...``: one measurement, one result line on stdout."""
    from saferlhfv.bench.peer_common import result_line, set_threads

    p = argparse.ArgumentParser(prog="python -m saferlhfv.bench.ours", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("ppo", "reward"))
    p.add_argument("--batch", type=int, default=16, help="episodes per PPO iteration / pairs per RM-V step")
    p.add_argument("--response-length", type=int, default=32, help="PPO: tokens per answer")
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs per iteration")
    p.add_argument("--iterations", type=int, default=3, help="timed PPO iterations / RM-V steps")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="separate")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=344)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--no-flops", action="store_true", help="do not count FLOPs")
    p.add_argument("--preset", default="tiny")
    args = p.parse_args(argv)
    set_threads(args.threads)
    sizes = Sizes(hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate,
                  vocab=args.vocab)  # fmt: skip
    if args.kind == "ppo":
        out = ours_ppo(batch=args.batch, response_length=args.response_length, epochs=args.epochs,
                       iterations=args.iterations, sizes=sizes, layout=args.layout, count=not args.no_flops,
                       preset=args.preset)  # fmt: skip
    else:
        out = ours_reward(batch=args.batch, steps=args.iterations, sizes=sizes, count=not args.no_flops,
                          preset=args.preset)  # fmt: skip
    print(result_line(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
