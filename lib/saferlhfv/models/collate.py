"""Batches for the training stages, through the model's own processor and chat template.

* :func:`sft_batch`: image + question + response with ``labels`` on the response
  tokens only (the prompt and padding are ``-100``), so SFT learns to answer, not
  to repeat questions.
* :func:`pair_batch`: the two responses of a preference pair as one ``[2B, T]``
  batch, first ``B`` rows the first response of each pair, next ``B`` the second;
  score models read both end scores in one forward pass.
* :func:`split_shared_prefix`: the same pair batch cut into the tokens the two rows of a
  pair share (picture and question, read once) and the rest (each answer), for
  :meth:`~saferlhfv.models.score.ScoreModel.pair_end_scores`.

Right padding throughout: score models read the last real token whatever the
side, and causal-LM labels line up with right padding without position tricks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import ProcessorMixin

from saferlhfv.models.generation import encode_prompts

__all__ = ["IGNORE_INDEX", "sft_batch", "pair_batch", "SharedPrefix", "split_shared_prefix", "blank_like"]

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


@dataclass
class SharedPrefix:
    """A pair batch cut at the end of what the two rows of each pair share (:func:`split_shared_prefix`).

    Attributes:
        prefix_ids, prefix_mask: ``[B, P]``, left-padded: pair ``i``'s shared tokens end at column ``P - 1``.
        prefix_index: ``[B, P]`` the column of the pair batch each prefix column came from (0 on padding),
            to lay out any other per-token tensor of the pair batch (Qwen2-VL's ``mm_token_type_ids``) the
            same way.
        suffix_ids, suffix_mask: ``[2B, A]``, right-padded, the tokens after the prefix; rows interleaved,
            ``2i`` the first response of pair ``i`` and ``2i + 1`` the second. Every row has at least one.
    """

    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    prefix_index: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor

    def full_mask(self) -> torch.Tensor:
        """``[2B, P + A]``: the mask of prefix + suffix, each pair's prefix repeated for its two rows."""
        return torch.cat([self.prefix_mask.repeat_interleave(2, dim=0), self.suffix_mask], dim=1)


def split_shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SharedPrefix:
    """Cut a right-padded pair batch into the tokens each pair's two rows share and the rest.

    Rows ``i`` and ``B + i`` of a :func:`pair_batch` hold the same picture and question, so their
    token ids agree up to the first token where the answers differ. The shared prefix is that longest
    common prefix, shortened where needed so that each row keeps at least its last token (two equal
    answers, or one a prefix of the other). Where it runs into the answers (both start "sure, here"),
    those tokens are shared too: the prefix is the same computation either way.

    Args:
        input_ids, attention_mask: ``[2B, T]``, right padding (:func:`pair_batch`).

    Returns:
        :class:`SharedPrefix`; pad ids are 0 (masked).

    Raises:
        ValueError: an odd number of rows, or padding on the left.
    """
    rows, T = input_ids.shape
    if rows % 2:
        raise ValueError(f"a pair batch has an even number of rows, got {rows}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(T, device=mask.device)[None] < lengths[:, None]):
        raise ValueError("split_shared_prefix needs right padding (real tokens first in every row)")
    B = rows // 2
    a, b = input_ids[:B], input_ids[B:]
    same = (a == b) & mask[:B] & mask[B:]
    common = same.long().cumprod(dim=1).sum(dim=1)  # [B] length of the common prefix
    shared = torch.minimum(common, torch.minimum(lengths[:B], lengths[B:]) - 1).clamp(min=0)
    P = int(shared.max())
    source = torch.arange(P, device=input_ids.device)[None] - (P - shared)[:, None]  # [B, P], < 0 on padding
    in_prefix = source >= 0
    index = source.clamp(min=0)
    prefix_ids = torch.where(in_prefix, a.gather(1, index), torch.zeros_like(index))
    # interleave the pair's rows: 2i = first response, 2i + 1 = second
    pairs_ids = torch.stack([a, b], dim=1).reshape(rows, T)
    rest = torch.stack([lengths[:B], lengths[B:]], dim=1).reshape(rows) - shared.repeat_interleave(2)
    A = int(rest.max())
    column = torch.arange(A, device=input_ids.device)[None]
    in_suffix = column < rest[:, None]
    source = (column + shared.repeat_interleave(2)[:, None]).clamp(max=T - 1)
    suffix_ids = torch.where(in_suffix, pairs_ids.gather(1, source), torch.zeros_like(source))
    return SharedPrefix(
        prefix_ids=prefix_ids,
        prefix_mask=in_prefix.to(attention_mask.dtype),
        prefix_index=index * in_prefix,
        suffix_ids=suffix_ids,
        suffix_mask=in_suffix.to(attention_mask.dtype),
    )


def blank_like(image: Image.Image, color: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """A plain grey picture of the same size: the *image ablation* input."""
    return Image.new("RGB", image.size, color)
