"""Peer of the PPO bench: TRL 0.19.1's ``PPOTrainer`` on a random tiny Llama; prints one result line.

Runs inside the isolated virtual environment :mod:`saferlhfv.bench.venvs` builds (TRL 0.19.1 needs
transformers 4.x); the benchmark starts it as ``<venv>/bin/python -P peer_trl_ppo.py --batch 16 ...``.
It cannot import ``saferlhfv``: it loads ``peer_common.py`` beside it by path.

Four roles, as TRL has them: policy and reference (``LlamaForCausalLM``), reward model and value model
(``LlamaForSequenceClassification``, one label), all randomly initialised with the same decoder size,
full fine-tuning of policy + value (one AdamW over both, TRL's ``PolicyAndValueWrapper``). Prompts are
random token ids of ``--prompt-length`` tokens (the benchmark passes our rollout's padded prompt length);
no stop token, so every answer runs to ``--response-length`` tokens, as our untrained models' do. One
rollout batch = one minibatch = ``--batch`` episodes (``num_mini_batches=1``, no accumulation).
float32 like ours: TRL's configs default to bf16 autocast (``bf16=None`` means True), which on a CPU
without bf16 instructions (AVX2 only) made its matmuls 10-20x slower; ``--trl-defaults`` keeps it.

Timing: iteration 1 runs under ``FlopCounterMode`` (its FLOPs are the result's ``flops_per_iteration``),
iteration 2 is a warm-up, iterations 3.. are timed from one ``on_step_end`` to the next (seconds).
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
    """The command line (sizes in tokens; ``--iterations`` timed after the counted and the warm-up one)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="episodes per iteration (rollout batch = minibatch)")
    p.add_argument("--response-length", type=int, default=32, help="tokens sampled per answer")
    p.add_argument("--prompt-length", type=int, default=80, help="prompt tokens per episode")
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs per iteration")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=344)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flops", action="store_true", help="do not count FLOPs (iteration 1 is then a warm-up)")
    p.add_argument("--trl-defaults", action="store_true", help="keep TRL's bf16 autocast default (not float32)")
    return p.parse_args(argv)


def build_models(args: argparse.Namespace, tokenizer):
    """Policy, reference, reward and value models: random tiny Llamas of one decoder size (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    def config(**extra):
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            max_position_embeddings=max(256, args.prompt_length + args.response_length + 8),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            **extra,
        )

    torch.manual_seed(args.seed)
    policy = LlamaForCausalLM(config())
    reference = LlamaForCausalLM(config())
    reference.load_state_dict(policy.state_dict())
    reward = LlamaForSequenceClassification(config(num_labels=1))
    value = LlamaForSequenceClassification(config(num_labels=1))
    value.load_state_dict(reward.state_dict())
    return policy, reference, reward, value


def run(args: argparse.Namespace) -> dict:
    """Build TRL's PPOTrainer, run ``iterations + 2`` iterations, return the result line's fields."""
    common = _common()
    threads = common.set_threads(args.threads)
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import PPOConfig, PPOTrainer

    counted = 0 if args.no_flops else 1
    total = args.iterations + 1 + counted
    rss_before = common.rss_mb()  # after the imports, before any model
    with tempfile.TemporaryDirectory(prefix="saferlhfv-peer-ppo-") as tmp:
        tokenizer = common.word_tokenizer(vocab_size=args.vocab, folder=Path(tmp) / "tokenizer")
        policy, reference, reward, value = build_models(args, tokenizer)
        rows = common.random_token_rows(rows=args.batch * total, length=args.prompt_length, vocab_size=args.vocab,
                                        seed=args.seed)  # fmt: skip
        train = Dataset.from_dict({"input_ids": rows})
        evaluation = Dataset.from_dict({"input_ids": rows[: args.batch]})
        config = PPOConfig(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            local_rollout_forward_batch_size=args.batch,
            num_ppo_epochs=args.epochs,
            response_length=args.response_length,
            total_episodes=args.batch * total,
            num_sample_generations=0,
            missing_eos_penalty=None,
            stop_token=None,
            temperature=1.0,
            learning_rate=1e-5,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            seed=args.seed,
            dataloader_num_workers=0,
            **({} if args.trl_defaults else {"bf16": False}),
        )
        clock, flops = common.StepClock(), {}

        class Marks(TrainerCallback):
            """Mark iteration ends; count the FLOPs of iteration 1 (entered at train begin, left at its end)."""

            def __init__(self):
                self.counter = None

            def on_train_begin(self, *a, **k):
                clock.start()
                if counted:
                    from torch.utils.flop_counter import FlopCounterMode

                    self.counter = FlopCounterMode(display=False)
                    self.counter.__enter__()

            def on_step_end(self, *a, **k):
                if self.counter is not None:
                    self.counter.__exit__(None, None, None)
                    flops["iteration"] = int(self.counter.get_total_flops())
                    self.counter = None
                clock.tick()

        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward,
            train_dataset=train,
            value_model=value,
            eval_dataset=evaluation,
            callbacks=[Marks()],
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    times = clock.intervals(skip=counted + 1)
    step = common.median(times)
    out = {
        "system": f"TRL {trl.__version__} PPOTrainer",
        "kind": "ppo",
        "roles": 4,
        "batch": args.batch,
        "prompt_tokens": args.prompt_length,
        "response_tokens": args.response_length,
        "epochs": args.epochs,
        "iteration_s": [round(t, 4) for t in times],
        "iteration_cpu_s": [round(t, 4) for t in clock.cpu_intervals(skip=counted + 1)],
        "median_iteration_s": round(step, 4),
        "episodes_per_s": round(args.batch / step, 3),
        "wall_s": round(wall, 2),
        "threads": threads,
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "rss_before_build_mb": round(rss_before, 1),
        "parameters_per_model": sum(p.numel() for p in policy.parameters()),
        "attn_implementation": policy.config._attn_implementation,
        "precision": "TRL defaults (bf16 autocast)" if args.trl_defaults else "float32",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }
    if "iteration" in flops:
        out["flops_per_iteration"] = flops["iteration"]
        out["flops_per_episode"] = flops["iteration"] / args.batch
    return out


def main(argv: list[str] | None = None) -> int:
    common = _common()
    common.drop_script_folder()
    print(common.result_line(run(parse_args(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
