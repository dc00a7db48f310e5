"""Peer of the RM-V bench: TRL's current ``RewardTrainer`` on a random tiny Llama; prints one result line.

Runs inside the isolated virtual environment :mod:`saferlhfv.bench.venvs` builds (TRL 1.16 with the
same transformers and torch as the project), started as ``<venv>/bin/python -P peer_trl_reward.py ...``.
It loads ``peer_common.py`` beside it by path.

One ``LlamaForSequenceClassification`` (one label) of the given decoder size, randomly initialised;
``--batch`` preference pairs per optimiser step (``2 x batch`` sequences), every sequence exactly
``--sequence-length`` random tokens (pre-tokenised ``chosen_ids`` / ``rejected_ids``: no padding).
float32 and no gradient checkpointing, as the project trains RM-V on the CPU (TRL 1.16's defaults
are bf16 and gradient checkpointing: ``--trl-defaults`` keeps them).

Timing: step 1 runs under ``FlopCounterMode`` (entered at ``on_step_begin``, left at ``on_step_end``),
step 2 is a warm-up, steps 3.. are timed from one ``on_step_end`` to the next (seconds, data
collation and the trainer's bookkeeping included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _common():
    """``peer_common.py`` beside this file, imported by path (once)."""
    import importlib.util

    name = "saferlhfv_bench_peer_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("peer_common.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sizes in tokens; ``--steps`` timed after the counted and the warm-up one)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="preference pairs per optimiser step")
    p.add_argument("--sequence-length", type=int, default=106, help="tokens per sequence (chosen and rejected)")
    p.add_argument("--steps", type=int, default=8, help="timed optimiser steps")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=344)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-defaults", action="store_true", help="keep TRL's bf16 / gradient checkpointing defaults")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Build the RewardTrainer, run ``steps + 2`` optimiser steps, return the result line's fields."""
    common = _common()
    threads = common.set_threads(args.threads)
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    total = args.steps + 2
    with tempfile.TemporaryDirectory(prefix="saferlhfv-peer-rm-") as tmp:
        tokenizer = common.word_tokenizer(vocab_size=args.vocab, folder=Path(tmp) / "tokenizer")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            max_position_embeddings=max(256, args.sequence_length + 8),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            num_labels=1,
        )
        torch.manual_seed(args.seed)
        model = LlamaForSequenceClassification(config)
        n = args.batch * total
        rows = common.random_token_rows(rows=2 * n, length=args.sequence_length, vocab_size=args.vocab, seed=args.seed)
        data = Dataset.from_dict({"chosen_ids": rows[:n], "rejected_ids": rows[n:]})
        extra = {} if args.trl_defaults else {"bf16": False, "gradient_checkpointing": False}
        reward_args = RewardConfig(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=total,
            learning_rate=1e-4,
            max_length=None,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            seed=args.seed,
            dataloader_num_workers=0,
            **extra,
        )
        clock, flops = common.StepClock(), {}

        class Marks(TrainerCallback):
            """Mark step ends; count the FLOPs of step 1 (from its on_step_begin to its on_step_end)."""

            def __init__(self):
                self.counter, self.steps = None, 0

            def on_train_begin(self, *a, **k):
                clock.start()

            def on_step_begin(self, *a, **k):
                if self.steps == 0:
                    from torch.utils.flop_counter import FlopCounterMode

                    self.counter = FlopCounterMode(display=False)
                    self.counter.__enter__()

            def on_step_end(self, *a, **k):
                if self.counter is not None:
                    self.counter.__exit__(None, None, None)
                    flops["step"] = int(self.counter.get_total_flops())
                    self.counter = None
                self.steps += 1
                clock.tick()

        trainer = RewardTrainer(
            model=model, args=reward_args, train_dataset=data, processing_class=tokenizer, callbacks=[Marks()]
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    times = clock.intervals(skip=2)
    step = common.median(times)
    tokens = 2 * args.batch * args.sequence_length
    return {
        "system": f"TRL {trl.__version__} RewardTrainer",
        "kind": "reward",
        "batch_pairs": args.batch,
        "sequence_tokens": args.sequence_length,
        "tokens_per_step": tokens,
        "step_s": [round(t, 4) for t in times],
        "step_cpu_s": [round(t, 4) for t in clock.cpu_intervals(skip=2)],
        "median_step_s": round(step, 4),
        "pairs_per_s": round(args.batch / step, 2),
        "tokens_per_s": round(tokens / step, 1),
        "flops_per_step": flops.get("step"),
        "wall_s": round(wall, 2),
        "threads": threads,
        "precision": "TRL defaults (bf16, gradient checkpointing)" if args.trl_defaults else "float32",
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    common = _common()
    common.drop_script_folder()
    print(common.result_line(run(parse_args(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
