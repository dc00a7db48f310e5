"""PPO rollouts: masks come from real response lengths, log-probs line up with the tokens."""

import pytest
import torch

from saferlhfv.config import Config
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.generation import encode_prompts, generate_responses, response_mask, token_logprobs
from saferlhfv.models.score import ScoreModel
from saferlhfv.train.ppo import make_rollout
from tests.helpers import CORPUS, picture, tiny_model_config


def test_response_mask_stops_after_first_eos():
    eos = 2
    generated = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    assert response_mask(generated, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_token_logprobs_match_a_manual_computation():
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    model.eval()
    batch = encode_prompts(processor, [picture(), picture((0, 200, 0))], ["what is this?", "q?"], ["a knife.", "no"])
    vision = {"pixel_values": batch["pixel_values"]}
    logp, entropy = token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision)
    assert logp.shape == entropy.shape == (2, batch["input_ids"].shape[1] - 1)
    # row 0 alone, no padding: logp[t] = log softmax(logits[t])[token t+1]
    n = int(batch["attention_mask"][0].sum())
    ids = batch["input_ids"][0, -n:].unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"][:1]).logits[0, :-1]
    manual = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp[0, -(n - 1) :], manual, rtol=1e-4, atol=1e-4)
    assert (entropy >= 0).all()


def test_token_logprobs_from_a_start_position_equal_the_full_pass_there_and_are_zero_before():
    """PPO reads log-probs from the first response position on (the head runs on those positions only)."""
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    model.eval()
    batch = encode_prompts(processor, [picture(), picture((0, 200, 0))], ["what is this?", "q?"], ["a knife.", "no"])
    vision = {"pixel_values": batch["pixel_values"]}
    ids, att = batch["input_ids"], batch["attention_mask"]
    full, full_entropy = token_logprobs(model, ids, att, vision)
    start = ids.shape[1] - 4
    logp, entropy = token_logprobs(model, ids, att, vision, start=start)
    assert logp.shape == full.shape
    torch.testing.assert_close(logp[:, start:], full[:, start:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy[:, start:], full_entropy[:, start:], rtol=1e-5, atol=1e-5)
    assert (logp[:, :start] == 0).all() and (entropy[:, :start] == 0).all()
    model.train()
    logp, _ = token_logprobs(model, ids, att, vision, start=start)
    logp[:, start:].sum().backward()  # the actor's update differentiates through it
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="start must be in"):
        token_logprobs(model, ids, att, vision, start=ids.shape[1] - 1)


def test_rollout_masks_scores_and_values_use_real_tokens_only():
    cfg = Config()
    cfg.ppo.max_new_tokens = 10
    actor, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    scorer, _ = build_tiny_vlm(tiny_model_config(), CORPUS, seed=3)
    rm = ScoreModel(scorer, seed=1).eval()
    rows = {
        "image": [picture(), picture((0, 0, 200)), picture((0, 200, 0))],
        "question": ["what is this?", "what is the best way to give these to a child?", "hi"],
        "context": ["{}"] * 3,
    }
    ro = make_rollout(
        actor=actor,
        reference=actor,
        reward_model=rm,
        cost_model=rm,
        reward_critic=rm,
        cost_critic=rm,
        processor=processor,
        rows=rows,
        cfg=cfg,
        seed=0,
    )
    B, L = ro.input_ids.shape
    assert ro.mask.shape == ro.old_logp.shape == ro.reward_values.shape == (B, L - 1)
    # the mask covers exactly the real response tokens: real tokens of the row minus its prompt's
    prompt_tokens = encode_prompts(processor, rows["image"], rows["question"])["attention_mask"].sum(1)
    assert torch.equal(ro.mask.sum(1), ro.attention_mask.sum(1) - prompt_tokens)
    assert (ro.mask.sum(1) >= 1).all() and (ro.mask.sum(1) <= cfg.ppo.max_new_tokens).all()
    # and only predicted tokens that are real: mask[t] = 1 implies attention_mask[t + 1] = 1
    assert (ro.attention_mask[:, 1:][ro.mask.bool()] == 1).all()
    # actor == reference here: pi_old's log-probs, read off generation's logits (KV cache, one token at a
    # time), equal the reference's from one forward pass over the whole sequence, on every response token
    real = ro.mask.bool()
    torch.testing.assert_close(ro.old_logp[real], ro.ref_logp[real], rtol=1e-4, atol=1e-4)
    assert (ro.old_logp[~real] == 0).all() and (ro.entropy[real] > 0).all()
    # the end score is read at the last real token of each row
    with torch.no_grad():
        out = rm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, **ro.vision)
    last = ro.attention_mask.shape[1] - 1 - ro.attention_mask.flip(1).argmax(1)
    torch.testing.assert_close(ro.end_reward, out.scores[torch.arange(B), last])
    assert len(ro.responses) == B and all(isinstance(r, str) for r in ro.responses)


class FixedLogits(torch.nn.Module):
    """An output head that ignores the hidden state: the same logits at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*hidden.shape[:-1], -1)


def test_rollouts_sample_the_whole_vocabulary_the_log_probs_are_over():
    """Near-flat logits (distinct: top-k keeps every tied token) make each of the ~400 tokens about
    equally likely; transformers' default top_k=50 would draw every answer from the same 50 tokens while
    token_logprobs normalises over all of them."""
    cfg = Config()
    cfg.ppo.max_new_tokens = 12
    actor, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    vocab = actor.get_output_embeddings().weight.shape[0]
    logits = torch.linspace(0.0, 0.01, vocab)
    actor.set_output_embeddings(FixedLogits(logits))
    rm = ScoreModel(build_tiny_vlm(tiny_model_config(), CORPUS, seed=3)[0], seed=1).eval()
    rows = {"image": [picture()] * 16, "question": ["what is this?"] * 16, "context": ["{}"] * 16}
    ro = make_rollout(actor=actor, reference=actor, reward_model=rm, cost_model=rm, reward_critic=None,
                      cost_critic=None, processor=processor, rows=rows, cfg=cfg, seed=0)  # fmt: skip
    real = ro.mask.bool()
    sampled = ro.input_ids[:, 1:][real]
    assert sampled.unique().numel() > 80, sampled.unique().numel()  # ~150 expected; <= 50 under top_k=50
    # each sampled token's log-probability is its logit minus the log-partition over the whole vocabulary
    torch.testing.assert_close(ro.old_logp[real], logits[sampled] - logits.logsumexp(0))
    # the evaluation's sampler too (answers re-tokenised: close to the sampled tokens)
    answers = generate_responses(actor, processor, [picture()] * 16, ["hi"] * 16, max_new_tokens=12, seed=0)
    ids = {i for a in processor.tokenizer(answers, add_special_tokens=False)["input_ids"] for i in a}
    assert len(ids) > 80, len(ids)
