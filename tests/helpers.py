"""Small shared builders for tests (no mini world needed)."""

from __future__ import annotations

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
    "ppo.rollout_batch_size=4",
    "ppo.batch_size=2",
    "ppo.max_new_tokens=6",
]
