"""Speed and memory of the preset's model: ``python -m saferlhfv.bench --preset tiny``.

Prints a table (or JSON with ``--json``):

* ``parameters``: parameter count of the VLM (vision tower, projector, decoder, LM head);
* ``train_step_s``: one optimiser step (forward + backward + AdamW) on a batch of
  ``--batch-size`` image + question + response sequences from the SFT mixture, median
  over ``--repeats`` steps after one warm-up step;
* ``generate_s`` and ``generate_tokens_per_s``: sampling exactly ``--new-tokens``
  tokens for ``--batch-size`` prompts with the KV cache, median over repeats;
* ``peak_memory_mb``: peak resident memory of the process (CPU) or peak allocated
  CUDA memory (GPU).

Timings are wall-clock on a possibly shared machine: compare medians, not single runs.
The same code measures the small preset on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any

import torch

from saferlhfv.config import Config, add_config_arguments, config_from_args

__all__ = ["bench_model", "main"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(cfg: Config, *, batch_size: int = 8, new_tokens: int = 32, repeats: int = 5) -> dict[str, Any]:
    """Measure the preset's VLM; see the module docstring for the fields returned."""
    from saferlhfv.data.world import sft_dataset, text_corpus
    from saferlhfv.models.factory import count_parameters, load_vlm
    from saferlhfv.models.generation import encode_prompts

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    corpus = text_corpus(cfg.data) if cfg.model.family == "tiny" else None
    model, processor = load_vlm(cfg.model, corpus)
    model.to(device).train()
    sft = sft_dataset(cfg.data).select(range(batch_size))
    images, questions, responses = list(sft["image"]), list(sft["question"]), list(sft["response"])

    train_batch = encode_prompts(processor, images, questions, responses, padding_side="right").to(device)
    labels = train_batch["input_ids"].masked_fill(train_batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        loss = model(**train_batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_s = _median_time(train_step, repeats, device)

    model.eval()
    gen_batch = encode_prompts(processor, images, questions).to(device)

    @torch.no_grad()
    def generate():
        model.generate(**gen_batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)

    gen_s = _median_time(generate, repeats, device)
    return {
        "preset": cfg.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "batch_size": batch_size,
        "train_sequence_length": int(train_batch["input_ids"].shape[1]),
        "train_step_s": round(train_s, 4),
        "train_samples_per_s": round(batch_size / train_s, 1),
        "new_tokens": new_tokens,
        "generate_s": round(gen_s, 4),
        "generate_tokens_per_s": round(batch_size * new_tokens / gen_s, 1),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.bench", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    cfg: Config = config_from_args(args)
    result = bench_model(cfg, batch_size=args.batch_size, new_tokens=args.new_tokens, repeats=args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result))
        print(f"{'metric':<{width}}  value")
        for key, value in result.items():
            print(f"{key:<{width}}  {value:,}" if isinstance(value, (int, float)) else f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
