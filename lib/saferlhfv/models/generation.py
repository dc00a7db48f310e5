"""Prompts through the processor's chat template, and batched generation from a VLM.

One rendering for every family: the processor's own chat template (LLaVA's,
Qwen2-VL's, or the tiny model's ``USER: <image>\\n{question} ASSISTANT:``), so the
same code drives a tiny model on a CPU and a 7B model on a GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, ProcessorMixin

from saferlhfv.data.rgb import to_rgb
from saferlhfv.masks import position_ids_from_mask
from saferlhfv.threads import busy, rebalance

__all__ = [
    "VISION_KEYS",
    "render_prompts",
    "encode_prompts",
    "media_token_ids",
    "generate_responses",
    "generate_answers",
    "ItemSeededSampling",
    "model_inputs",
    "select_vision",
    "cache_kwargs",
    "cache_of",
    "token_logprobs",
    "response_mask",
    "end_token_ids",
    "end_at_eos",
]


def render_prompts(
    processor: ProcessorMixin, questions: Sequence[str], responses: Sequence[str] | None = None
) -> list[str]:
    """Chat-format each question with one image placeholder (and the response, if given).

    Args:
        processor: a VLM processor with a chat template.
        questions: the user's requests, one per picture.
        responses: assistant answers to append (for scoring or SFT); ``None`` ends each
            text with the generation prompt instead.

    Returns:
        The rendered texts, one per question.
    """
    if responses is not None and len(responses) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
    texts = []
    for i, question in enumerate(questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if responses is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": responses[i]}]})
        text = processor.apply_chat_template(messages, add_generation_prompt=responses is None, tokenize=False)
        texts.append(text if responses is None else end_at_eos(text, processor.tokenizer.eos_token))
    return texts


def end_at_eos(text: str, eos: str) -> str:
    """A rendered conversation that ends exactly at its answer's end-of-sequence token, as a generated one does.

    A policy's sampled answer ends at the EOS token it generated (``<|im_end|>`` for Qwen2-VL-Instruct,
    ``</s>`` for LLaVA), so PPO reads RM-V's and CM-V's scores there. Chat templates differ in what
    follows the answer: Qwen's adds a newline after ``<|im_end|>``, LLaVA-NeXT's a space after ``</s>``,
    LLaVA-1.5's ends with a space and no ``</s>`` at all. Cut the trailing whitespace and end with
    ``eos`` so that training (SFT labels, RM-V / CM-V end scores) sees the same last token as PPO.
    """
    text = text.rstrip()
    return text if text.endswith(eos) else text + eos


def encode_prompts(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses: Sequence[str] | None = None,
    *,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Tokenize pictures + chat-formatted texts into a padded batch.

    Left padding (the default) is what generation needs; score models read the last
    real token and accept either side.

    Returns:
        The processor's tensors: ``input_ids [B, T]``, ``attention_mask [B, T]`` and the
        image tensors of the family (``pixel_values``, ...).
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    tokenizer = processor.tokenizer
    previous, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        texts = render_prompts(processor, questions, responses)
        return processor(images=[to_rgb(img) for img in images], text=texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous


def media_token_ids(processor: ProcessorMixin) -> list[int]:
    """Ids of the image / video placeholder tokens, which a policy must never generate.

    A sampled ``<image>`` token would ask the model for image features it does not have (the next
    forward pass fails with "image features and image tokens do not match"); under-trained policies
    do sample it, so generation suppresses these ids.
    """
    ids = {getattr(processor, name, None) for name in ("image_token_id", "video_token_id")}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def sampling_kwargs(*, temperature: float = 1.0, top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` keywords that sample from the policy's own distribution ``softmax(logits / temperature)``
    (nucleus-cut only when ``top_p < 1``).

    ``top_k=0`` matters: without it transformers falls back to its default ``top_k=50``, so answers would
    be drawn from a truncated distribution while PPO's log-probabilities (:func:`token_logprobs`) and the
    KL to the reference are computed over the whole vocabulary: a biased policy gradient.
    """
    return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)


class ItemSeededSampling(LogitsProcessor):
    """Sampling keyed by item: row ``r``'s next token is ``argmax(logits / T + G)`` with ``G`` standard
    Gumbel noise drawn from a generator seeded with ``item_seeds[r]``.

    By the Gumbel-max trick this is an exact sample of ``softmax(logits / T)``:
    ``P(argmax_v (l_v + G_v) = w) = exp(l_w) / sum_v exp(l_v)``. Row ``r``'s ``t``-th draw depends only
    on its seed, so an item gets the same answer whichever other items share its batch: two guardrails
    that regenerate different sets of answers still draw the *same* new answer for an item they both
    regenerate (common random numbers; :func:`saferlhfv.guardrail.filter_and_regenerate`). Used with
    greedy decoding (``do_sample=False``), after the suppressed tokens are set to ``-inf``.
    """

    def __init__(self, item_seeds: Sequence[int], temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in item_seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores [B, V]`` -> ``scores / T + G``, ``G [B, V]`` Gumbel(0, 1) from each row's own generator."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows for {len(self.generators)} item seeds")
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u))
        return scores / self.temperature + gumbel.to(scores.device, scores.dtype)


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 48,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    item_seeds: Sequence[int] | None = None,
) -> list[str]:
    """Answer each (image, question) with the model's chat format, using the KV cache.

    Args:
        max_new_tokens: response budget in tokens.
        do_sample: sample (RL rollouts) or greedy decode (evaluation).
        seed: seeds the sampling RNG for a reproducible answer (the caller's RNG is untouched).
        item_seeds: one seed per item instead: each answer is sampled with its own generator
            (:class:`ItemSeededSampling`), the same whatever the rest of the batch; needs ``do_sample``
            and ``top_p == 1``.

    Returns:
        The decoded responses (special tokens removed, surrounding spaces stripped).
    """
    batch = encode_prompts(processor, images, questions).to(model.device)
    n_prompt = batch["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=max_new_tokens, use_cache=True, suppress_tokens=media_token_ids(processor))
    if item_seeds is not None:
        if len(item_seeds) != len(questions):
            raise ValueError(f"{len(item_seeds)} item seeds for {len(questions)} questions")
        if not do_sample or top_p < 1:
            raise ValueError("item_seeds sample the full distribution: use do_sample=True and top_p=1")
        processors = LogitsProcessorList([ItemSeededSampling(item_seeds, temperature)])
        kwargs.update(do_sample=False, logits_processor=processors)
    elif do_sample:
        kwargs.update(sampling_kwargs(temperature=temperature, top_p=top_p))
    else:
        kwargs.update(do_sample=False)
    was_training = model.training
    model.eval()
    try:
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(**batch, **kwargs)
    finally:
        model.train(was_training)
    return [t.strip() for t in processor.batch_decode(out[:, n_prompt:], skip_special_tokens=True)]


def generate_answers(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    batch_size: int = 32,
    seed: int = 0,
    item_seeds: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[str]:
    """:func:`generate_responses` over batches of ``batch_size``, the batch starting at item ``s``
    seeded ``seed + s``: the same answers whatever calls it (evaluation, the guardrail, the rollout
    table), and reproducible one batch at a time.

    Args:
        item_seeds: one sampling seed per item (:class:`ItemSeededSampling`): answers independent of batching.
        kwargs: :func:`generate_responses`'s keywords (``max_new_tokens``, ``do_sample``, ``temperature``...).

    Returns:
        One answer per (image, question), in order.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    if item_seeds is not None and len(item_seeds) != len(questions):
        raise ValueError(f"{len(item_seeds)} item seeds for {len(questions)} questions")
    answers: list[str] = []
    with busy():  # a busy worker: its share of the cores (saferlhfv.threads)
        for start in range(0, len(questions), batch_size):
            rebalance()
            stop = start + batch_size
            keyed = None if item_seeds is None else list(item_seeds[start:stop])
            answers += generate_responses(
                model,
                processor,
                list(images[start:stop]),
                list(questions[start:stop]),
                seed=seed + start,
                item_seeds=keyed,
                **kwargs,
            )
    return answers


#: the processor outputs that carry the image (whichever a family produces).
VISION_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes")


def cache_kwargs(module: nn.Module, cache) -> dict:
    """``{name: cache}`` under the name ``module.forward`` takes the KV cache by (``cache`` in recent
    transformers, ``past_key_values`` before)."""
    target = module.get_base_model() if hasattr(module, "get_base_model") else module  # peft: the wrapped model
    params = inspect.signature(target.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def cache_of(out) -> object:
    """The KV cache a forward pass returned (``cache`` or ``past_key_values``, whichever the version uses)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def select_vision(vision: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor's image tensors of the rows ``index`` (``[K]`` long) of a batch.

    Row-indexed for LLaVA (``pixel_values [B, ...]``, ``image_sizes``); Qwen2-VL concatenates the patches
    of all images along dim 0, so its ``pixel_values`` are cut by ``image_grid_thw`` first.
    """
    if "image_grid_thw" in vision:
        grid = vision["image_grid_thw"]
        sizes = grid.prod(dim=1).tolist()
        chunks = torch.split(vision["pixel_values"], sizes)
        out = {
            "pixel_values": torch.cat([chunks[i] for i in index.tolist()]),
            "image_grid_thw": grid[index],
        }
        if "mm_token_type_ids" in vision:
            out["mm_token_type_ids"] = vision["mm_token_type_ids"][index]
        return out
    return {k: v[index] for k, v in vision.items()}


def model_inputs(input_ids, attention_mask, vision: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Keyword arguments of a forward pass: ids ``[B, L]``, mask ``[B, L]``, the processor's image tensors,
    and for LLaVA-style models position ids that count real tokens only (left padding safe).

    ``vision`` may come from the prompts alone (``[B, P]`` with ``P <= L``): Qwen2-VL's per-token
    ``mm_token_type_ids`` are then extended with text (0) over the ``L - P`` tokens appended after
    the prompt (the answer), which is what its 3-D rope positions need.
    """
    vision = dict(vision)
    types = vision.get("mm_token_type_ids")
    if types is not None and types.shape[1] < input_ids.shape[1]:
        vision["mm_token_type_ids"] = torch.cat(
            [types, types.new_zeros(types.shape[0], input_ids.shape[1] - types.shape[1])], dim=1
        )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **vision}
    if "image_grid_thw" not in vision:  # LLaVA: positions count real tokens only (left padding safe)
        inputs["position_ids"] = position_ids_from_mask(attention_mask)
    return inputs


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vision: dict[str, torch.Tensor],
    *,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability (and entropy) of each next token under ``model``.

    Args:
        start: the first position ``t`` whose log-prob is wanted; the language-model head and the softmax
            run on positions ``t >= start`` only (``logits_to_keep``), the rest of the result is 0. PPO
            passes the first response position ``P - 1``: the prompt's logits (most of a VLM's sequence:
            image tokens) are never computed, which saves the head's FLOPs and a ``[B, P, V]`` float32
            tensor (with a 152k vocabulary, 0.6 MB per prompt token and sequence).

    Returns:
        ``(logp, entropy)``, both ``[B, L-1]``: ``logp[:, t] = log pi(input_ids[:, t+1] | input_ids[:, :t+1])``
        for ``t >= start``, 0 before.
    """
    L = input_ids.shape[1]
    if not 0 <= start < L - 1:
        raise ValueError(f"start must be in [0, {L - 2}] for sequences of {L} tokens, got {start}")
    inputs = model_inputs(input_ids, attention_mask, vision)
    logits = model(**inputs, use_cache=False, logits_to_keep=L - start).logits[:, :-1]
    logp, entropy = logprobs_from_logits(logits, input_ids[:, start + 1 :])
    if start == 0:
        return logp, entropy
    pad = logp.new_zeros(logp.shape[0], start)
    return torch.cat([pad, logp], dim=1), torch.cat([pad, entropy], dim=1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``tokens`` and the entropy under next-token ``logits`` (full softmax, float32).

    Args:
        logits: ``[B, T, V]`` next-token logits (any float dtype).
        tokens: ``[B, T]`` the token chosen at each position.

    Returns:
        ``(logp, entropy)``, both ``[B, T]`` float32, in nats.
    """
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def end_token_ids(model, processor: ProcessorMixin) -> list[int]:
    """Every token id that ends an answer: the generation config's EOS ids (Qwen2-VL-Instruct lists
    ``<|im_end|>`` and ``<|endoftext|>``) and the tokenizer's EOS. ``model`` may be wrapped (peft,
    DDP) or ``None`` (the tokenizer's EOS only)."""
    ids = {processor.tokenizer.eos_token_id}
    for m in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        config = getattr(m, "generation_config", None)
        if config is not None:
            eos = config.eos_token_id
            ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return sorted(i for i in ids if i is not None)


def response_mask(generated: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """1 on the real tokens of generated responses: up to and including the first end token.

    Args:
        generated: ``[B, R]`` the tokens ``generate`` appended after the prompts.
        eos_token_id: the id, or every id (:func:`end_token_ids`), that ends an answer.

    Returns:
        ``[B, R]`` long mask (tokens after the first EOS are padding).
    """
    ends = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    is_eos = torch.isin(generated, ends.to(generated.device)).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~after_eos).long()
