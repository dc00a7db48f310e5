"""Batches for the training stages, through the model's own processor and chat template.

* :func:`sft_batch`: image + question + response with ``labels`` on the response
  tokens only (the prompt and padding are ``-100``), so SFT learns to answer, not
  to repeat questions.
* :func:`pair_batch`: the two responses of a preference pair as one ``[2B, T]``
  batch, first ``B`` rows the first response of each pair, next ``B`` the second;
  score models read both end scores in one forward pass.

Right padding throughout: score models read the last real token whatever the
side, and causal-LM labels line up with right padding without position tricks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import ProcessorMixin

from saferlhfv.models.generation import encode_prompts

__all__ = ["IGNORE_INDEX", "sft_batch", "pair_batch", "blank_like"]

IGNORE_INDEX = -100


def sft_batch(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Tokenize SFT examples with labels on the response (and its end-of-turn token) only.

    Returns:
        The processor's tensors (``input_ids [B, T]``, ``attention_mask [B, T]``, image
        tensors) plus ``labels [B, T]`` with ``-100`` on prompt and padding positions.
    """
    full = encode_prompts(processor, images, questions, responses, padding_side="right")
    prompt_len = encode_prompts(processor, images, questions, padding_side="right")["attention_mask"].sum(dim=1)
    positions = torch.arange(full["input_ids"].shape[1]).unsqueeze(0)
    labels = full["input_ids"].clone()
    labels[(positions < prompt_len.unsqueeze(1)) | (full["attention_mask"] == 0)] = IGNORE_INDEX
    full["labels"] = labels
    return full


def pair_batch(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Both responses of each pair in one right-padded batch of ``2B`` rows (``a`` rows first)."""
    if not (len(images) == len(questions) == len(responses_a) == len(responses_b)):
        raise ValueError("pair_batch needs as many images, questions and both responses")
    return encode_prompts(
        processor,
        list(images) + list(images),
        list(questions) + list(questions),
        list(responses_a) + list(responses_b),
        padding_side="right",
    )


def blank_like(image: Image.Image, color: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """A plain grey picture of the same size: the *image ablation* input."""
    return Image.new("RGB", image.size, color)
