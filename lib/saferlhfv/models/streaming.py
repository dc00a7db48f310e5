"""Streaming with the monitor: scores through its KV cache, and a policy stopped mid-answer.

:class:`MonitorStream` reads a prompt once and then takes the answer one token at a time through
the :class:`~saferlhfv.models.monitor.StreamingMonitor`'s own KV cache (one decoder step per
token, never the whole prefix again); each :meth:`MonitorStream.push` returns the response head's
``P(harmful | answer so far)``, equal to the same position of one full forward pass.

:func:`stream_generate` lets a policy write its answer token by token (its own KV cache) while the
monitor reads along, and stops it when the rule of
:func:`saferlhfv.algorithms.streaming.stop_position` fires: the ``k``-th token whose score
reaches ``tau``. Positions count real tokens only, as everywhere in the project
(:func:`saferlhfv.masks.position_ids_from_mask`); Qwen2-VL's 3-D rope positions continue from the
deltas the model stored when it read the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from saferlhfv.masks import position_ids_from_mask
from saferlhfv.models.generation import cache_kwargs, cache_of, encode_prompts, end_token_ids, media_token_ids
from saferlhfv.models.monitor import StreamingMonitor

__all__ = ["MonitorStream", "StreamResult", "stream_generate", "cache_kwargs", "cache_of", "next_position_ids"]


class MonitorStream:
    """Incremental scoring: the answer's tokens enter one at a time through the monitor's KV cache.

    The prompt (picture and question, left-padded when ``B > 1``) is read once; each
    :meth:`push` then costs one decoder step of one token per row, and returns the response
    head's ``P(harmful | answer so far)`` at that token, equal (to float rounding) to the
    corresponding position of one full forward pass over prompt + answer.

    Position ids count real tokens only, as in
    :meth:`~saferlhfv.models.score.VLMWithHeads.hidden_states`, so a
    left-padded prompt scores like the same prompt alone. Qwen2-VL derives its 3-D positions from
    the cached prompt itself.

    Attributes:
        scores: the probabilities returned so far, one ``[B]`` tensor per pushed token.
    """

    def __init__(self, monitor: StreamingMonitor, input_ids, attention_mask, **vision_inputs):
        self.monitor = monitor
        self.core = monitor._base().model  # LlavaModel / Qwen2VLModel: decoder states, no LM head
        self.mask = attention_mask
        self.scores: list[torch.Tensor] = []
        kwargs = dict(vision_inputs)
        if "image_grid_thw" not in vision_inputs:  # Qwen2-VL derives its 3-D rope positions from the prompt
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        with torch.no_grad():
            out = self.core(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kwargs)
        self.past = cache_of(out)
        self.mrope = "image_grid_thw" in vision_inputs

    @torch.no_grad()
    def push(self, token_ids: torch.Tensor | int) -> torch.Tensor:
        """Append one token per row and score the answer so far.

        Args:
            token_ids: ``[B]`` (or an int when ``B = 1``) the next token of each answer.

        Returns:
            ``[B]`` float: P(harmful | answer up to and including this token).
        """
        ids = torch.as_tensor(token_ids, device=self.mask.device).reshape(-1, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        position_ids = next_position_ids(self.core, self.mask, mrope=self.mrope)
        out = self.core(
            input_ids=ids, attention_mask=self.mask, position_ids=position_ids, use_cache=True,
            **cache_kwargs(self.core, self.past),
        )  # fmt: skip
        self.past = cache_of(out)
        _, response_logits = self.monitor.read(out.last_hidden_state[:, -1])
        p = torch.softmax(response_logits.float(), dim=-1)[:, 1]
        self.scores.append(p)
        return p


def next_position_ids(core: nn.Module, mask: torch.Tensor, *, mrope: bool) -> torch.Tensor:
    """Position ids ``[B, 1]`` of the newest token (its index among the row's real tokens); for Qwen2-VL
    ``[1, B, 1]`` text positions shifted by the rope deltas the model stored when it read the prompt."""
    pos = position_ids_from_mask(mask)[:, -1:]
    if mrope:
        return pos[None] + core.rope_deltas.to(pos.device)
    return pos


@dataclass
class StreamResult:
    """One answer written under a streaming monitor.

    Attributes:
        text: the answer as delivered (up to and including the token that stopped it).
        stop_index: the response position (0 = first answer token) where the rule fired; -1 if never.
        flagged: the rule fired.
        scores: ``P(harmful | answer so far)`` after each token.
        token_ids: the tokens written (the end-of-turn token included when the policy wrote it).
    """

    text: str
    stop_index: int
    flagged: bool
    scores: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


@torch.no_grad()
def stream_generate(
    policy: PreTrainedModel,
    monitor: StreamingMonitor | None,
    processor: ProcessorMixin,
    image: Image.Image,
    question: str,
    *,
    tau: float,
    k: int,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
) -> StreamResult:
    """Let ``policy`` answer token by token while ``monitor`` reads along; stop when the rule fires.

    Both models keep their own KV cache: each step is one decoder step of the policy (the next
    token) and one of the monitor (its score). The answer stops at the ``k``-th token whose
    score reaches ``tau`` (:func:`saferlhfv.algorithms.streaming.stop_position`), at the
    policy's end-of-turn token, or after ``max_new_tokens``. Image placeholder tokens are never
    sampled (:func:`~saferlhfv.models.generation.media_token_ids`). The two models must share the
    processor (the monitor is trained from the policy's SFT precursor). ``monitor=None`` writes the
    same answer unmonitored (no scores, never stopped): with the same ``seed`` a monitored answer is
    a prefix of the unmonitored one (the monitor draws no random numbers).

    Returns:
        :class:`StreamResult`.
    """
    device = next(policy.parameters()).device
    batch = encode_prompts(processor, [image], [question]).to(device)
    vision = {k_: v for k_, v in batch.items() if k_ not in ("input_ids", "attention_mask")}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    eos_ids = set(end_token_ids(policy, processor))
    banned = media_token_ids(processor)
    mrope = "image_grid_thw" in vision
    was = policy.training, monitor is not None and monitor.training
    policy.eval()
    stream = None
    if monitor is not None:
        monitor.eval()
        stream = MonitorStream(monitor, ids, mask, **vision)
    tokens: list[int] = []
    scores: list[float] = []
    stop, flags = -1, 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            inputs = {"input_ids": ids, "attention_mask": mask, **vision}
            if not mrope:
                inputs["position_ids"] = position_ids_from_mask(mask)
            out = policy(**inputs, use_cache=True)
            core = policy.get_base_model().model if hasattr(policy, "get_base_model") else policy.model
            for t in range(max_new_tokens):
                logits = out.logits[:, -1].float()
                if banned:
                    logits[:, banned] = float("-inf")
                if do_sample:
                    nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
                else:
                    nxt = logits.argmax(dim=-1)
                tokens.append(int(nxt))
                if stream is not None:
                    p = float(stream.push(nxt)[0])
                    scores.append(p)
                    flags += p >= tau
                    if flags >= k:
                        stop = t
                        break
                if int(nxt) in eos_ids:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = policy(
                    input_ids=nxt.view(1, 1), attention_mask=mask, use_cache=True,
                    position_ids=next_position_ids(core, mask, mrope=mrope), **cache_kwargs(policy, cache_of(out)),
                )  # fmt: skip
    finally:
        policy.train(was[0])
        if monitor is not None:
            monitor.train(was[1])
    text = processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return StreamResult(text=text, stop_index=stop, flagged=stop >= 0, scores=scores, token_ids=tokens)
