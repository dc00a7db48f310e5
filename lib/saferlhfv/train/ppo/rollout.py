"""Rollouts of PPO: sample answers with the actor, score them with every role.

:func:`make_rollout` is step 1 of an iteration (see :mod:`saferlhfv.train.ppo.trainer`): it samples
responses for a batch of (image, question) prompts with the KV cache, cuts each at its first end
token (any EOS id of the generation config: :func:`~saferlhfv.models.generation.response_mask`),
and reads the actor's per-token log-probabilities from the logits generation computed, the
reference's with a forward pass (:func:`~saferlhfv.models.generation.token_logprobs`), the reward
and cost critics' per-token values and RM-V's / CM-V's end scores at the last real token. The
result is a :class:`Rollout`, whose ``[B, L-1]`` tensors are indexed by the *predicted* token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saferlhfv.config import Config
from saferlhfv.models.generation import (
    VISION_KEYS,
    encode_prompts,
    end_token_ids,
    logprobs_from_logits,
    media_token_ids,
    model_inputs,
    response_mask,
    sampling_kwargs,
    select_vision,
    token_logprobs,
)
from saferlhfv.models.score import ScoreModel

__all__ = ["Rollout", "make_rollout"]


@dataclass
class Rollout:
    """One batch of experience; every ``[B, L-1]`` tensor is indexed by the *predicted* token.

    Attributes:
        input_ids, attention_mask: ``[B, L]`` prompt (left-padded) + response (right-padded).
        vision: the processor's image tensors for the batch.
        mask: ``[B, L-1]`` 1 where ``input_ids[:, t+1]`` is a real response token.
        response_start: the first position ``t`` that can predict a response token (``P - 1``, the
            prompts' padded length less one): log-probs are computed from there on.
        old_logp, ref_logp: ``[B, L-1]`` actor and reference log-probs at rollout.
        reward_values, cost_values: ``[B, L-1]`` critic values.
        end_reward, end_cost: ``[B]`` RM-V / CM-V scores at the last real token.
        reward_adv, reward_ret, cost_adv, cost_ret: ``[B, L-1]`` GAE results.
        advantages: ``[B, L-1]`` the combined advantage the actor's surrogate uses.
        reward_total, cost_total: ``[B]`` critic-free methods: each answer's summed shaped reward / cost.
        responses: decoded responses; contexts: the prompts' oracle contexts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    vision: dict[str, torch.Tensor]
    mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    entropy: torch.Tensor
    reward_values: torch.Tensor
    cost_values: torch.Tensor
    end_reward: torch.Tensor
    end_cost: torch.Tensor
    responses: list[str]
    contexts: list[str]
    response_start: int = 0
    reward_adv: torch.Tensor | None = None
    reward_ret: torch.Tensor | None = None
    cost_adv: torch.Tensor | None = None
    cost_ret: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    reward_total: torch.Tensor | None = None
    cost_total: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> dict[str, Any]:
        """Rows ``index`` of every tensor that is set (vision tensors included), as a dict."""
        rows = {
            k: getattr(self, k)[index]
            for k in (
                "input_ids",
                "attention_mask",
                "mask",
                "old_logp",
                "ref_logp",
                "reward_values",
                "cost_values",
                "reward_adv",
                "reward_ret",
                "cost_adv",
                "cost_ret",
                "advantages",
            )
            if getattr(self, k) is not None
        }
        rows["vision"] = select_vision(self.vision, index)
        rows["response_start"] = self.response_start
        return rows


@torch.no_grad()
def make_rollout(
    *,
    actor,
    reference,
    reward_model: ScoreModel,
    cost_model: ScoreModel,
    reward_critic: ScoreModel | None,
    cost_critic: ScoreModel | None,
    processor,
    rows: dict[str, list],
    cfg: Config,
    seed: int,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample responses for ``rows`` (``image``, ``question``, ``context``) and score them with every role.

    Without critics (``None``: critic-free methods) the values are zeros.
    """
    ppo = cfg.ppo
    device = next(actor.parameters()).device
    prompt = encode_prompts(processor, rows["image"], rows["question"], padding_side="left").to(device)
    vision = {k: prompt[k] for k in VISION_KEYS if k in prompt}
    was_training = actor.training
    actor.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = actor.generate(
            **prompt,
            max_new_tokens=ppo.max_new_tokens,
            **sampling_kwargs(temperature=ppo.temperature, top_p=ppo.top_p),
            use_cache=True,
            suppress_tokens=media_token_ids(processor),
            synced_gpus=synced_gpus,
            return_dict_in_generate=True,
            output_logits=True,
        )
    actor.train(was_training)
    sequences, step_logits = out.sequences, out.logits
    del out  # it also holds the KV cache (past_key_values): free it before the scoring passes
    P = prompt["input_ids"].shape[1]
    generated = sequences[:, P:]
    eos = processor.tokenizer.eos_token_id
    real = response_mask(generated, end_token_ids(actor, processor))
    attention_mask = torch.cat([prompt["attention_mask"], real], dim=1)
    input_ids = sequences.masked_fill(attention_mask == 0, processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids[:, 1:])
    mask[:, P - 1 :] = real  # logp[:, t] predicts token t+1: response tokens start at t = P-1

    # pi_old's log-probs from the logits generation already computed (raw: before temperature, top-p
    # and the media-token suppression; in eval mode, as the answers were sampled), not a second pass
    old_logp = torch.zeros(input_ids[:, 1:].shape, device=device)
    entropy = torch.zeros_like(old_logp)
    old_logp[:, P - 1 :], entropy[:, P - 1 :] = logprobs_from_logits(torch.stack(step_logits, dim=1), generated)
    del step_logits
    ref_logp, _ = token_logprobs(reference, input_ids, attention_mask, vision, start=P - 1)
    inputs = model_inputs(input_ids, attention_mask, vision)
    inputs.pop("position_ids", None)  # ScoreModel derives positions itself
    end_reward = reward_model(**inputs).end_scores.float()
    end_cost = cost_model(**inputs).end_scores.float()
    reward_values, cost_values = (
        critic(**inputs).scores[:, :-1].float() if critic is not None else torch.zeros_like(old_logp)
        for critic in (reward_critic, cost_critic)
    )
    responses = [
        t.strip() for t in processor.batch_decode(generated.masked_fill(real == 0, eos), skip_special_tokens=True)
    ]
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        vision=vision,
        mask=mask,
        old_logp=old_logp,
        ref_logp=ref_logp,
        entropy=entropy,
        reward_values=reward_values,
        cost_values=cost_values,
        end_reward=end_reward,
        end_cost=end_cost,
        responses=responses,
        contexts=list(rows["context"]),
        response_start=P - 1,
    )
