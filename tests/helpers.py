"""Small shared builders for tests (no mini world needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

from saferlhfv.config import ModelConfig

CORPUS = [
    "what is the best way to give these to a child?",
    "what is in the picture?",
    "I can't help with that, because it could hurt someone.",
    "the picture shows a red knife on a blue table.",
    "crush the pills and mix them into a drink.",
    "candy is a fine treat in small amounts, after a meal.",
    "here is a safer idea: ask a doctor or a pharmacist.",
] * 20


def tiny_model_config(**overrides) -> ModelConfig:
    """A smaller-than-preset tiny model so tests stay fast."""
    fields = dict(tiny_vocab_size=400, tiny_hidden_size=64, tiny_layers=2, tiny_heads=4, tiny_intermediate_size=128)
    fields.update(overrides)
    return ModelConfig(**fields)


def picture(color=(200, 30, 30), size: int = 64) -> Image.Image:
    """A plain picture with a shape, enough for a vision tower to see."""
    img = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(img).ellipse((12, 12, size - 12, size - 12), fill=color)
    return img


#: a tiny model and world small enough that SFT, RM-V, CM-V and a few PPO iterations train in seconds.
SMALL_MODEL_AND_WORLD = [
    "model.tiny_hidden_size=64",
    "model.tiny_layers=2",
    "model.tiny_intermediate_size=128",
    "model.tiny_vocab_size=600",
    "data.pairs_per_category_train=2",
    "data.pairs_per_category_eval=1",
    "data.prompts_per_category_train=2",
    "data.prompts_per_category_eval=1",
    "data.sft_per_category=4",
    # a few steps of vision pretraining, not the preset's 2,000 (about 55 s per upstream fixture): these
    # tests check mechanics, not what the precursor sees (tests/test_vision_pretrain.py does)
    "sft.vision_steps=20",
    "sft.caption_examples=64",
    "ppo.rollout_batch_size=4",
    "ppo.batch_size=2",
    "ppo.max_new_tokens=6",
]


@contextmanager
def upstream_artifacts(folder: Path, overrides: list[str]) -> Iterator[dict[str, Path]]:
    """Train SFT, RM-V and CM-V for ``overrides`` into the artifact cache ``folder``; yield their folders.

    ``SAFERLHFV_ARTIFACTS`` points at ``folder`` while the block runs.
    """
    from saferlhfv.config import load_config
    from saferlhfv.stages import ensure

    old = os.environ.get("SAFERLHFV_ARTIFACTS")
    os.environ["SAFERLHFV_ARTIFACTS"] = str(folder)
    try:
        cfg = load_config("tiny", overrides=overrides)
        yield {
            "sft_dir": ensure("sft", cfg)[0],
            "reward_dir": ensure("reward", cfg)[0],
            "cost_dir": ensure("cost", cfg)[0],
        }
    finally:
        if old is None:
            os.environ.pop("SAFERLHFV_ARTIFACTS", None)
        else:
            os.environ["SAFERLHFV_ARTIFACTS"] = old


def run_ppo_two_processes(artifacts: Path, out: Path, overrides: list[str]) -> dict:
    """``torchrun --nproc_per_node 2`` of the PPO CLI on CPU (gloo); asserts a clean exit, returns result.json."""
    from saferlhfv.artifacts import RESULT

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "saferlhfv.run", "ppo", "--preset", "tiny", "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, SAFERLHFV_ARTIFACTS=str(artifacts), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / RESULT).read_text())


def interrupt_and_resume(cfg, dirs: dict[str, Path], folder: Path, *, stop_after: int = 2):
    """Train PPO ``stop_after`` iterations into ``folder``, then finish in a new trainer from the checkpoint.

    Returns:
        ``(resumed trainer, its train() result)``.
    """
    from saferlhfv.train.ppo import make_trainer

    make_trainer(cfg, out_dir=folder, **dirs).train(stop_after=stop_after)
    resumed = make_trainer(cfg, out_dir=folder, **dirs)
    return resumed, resumed.train()
