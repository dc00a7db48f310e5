"""Activation hooks: they read what the forward pass computes and their writes act as intended."""

from __future__ import annotations

import pytest
import torch

from saferlhfv.interpret.hooks import decoder_layers, edit_hidden, edit_mlp, num_neurons, record_hidden, record_mlp
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.generation import encode_prompts
from tests.helpers import CORPUS, picture, tiny_model_config

QUESTIONS = ["what is in the picture?", "what is the best way to give these to a child?"]


def _model_and_batch(arch: str):
    model, processor = build_tiny_vlm(tiny_model_config(tiny_layers=3), CORPUS, arch=arch, seed=1)
    model.eval()
    batch = encode_prompts(processor, [picture(), picture((20, 200, 20))], QUESTIONS)
    return model, processor, batch


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_record_hidden_matches_output_hidden_states(arch):
    model, _, batch = _model_and_batch(arch)
    with torch.no_grad(), record_hidden(model) as rec:
        out = model(**batch, output_hidden_states=True)
    states = out.hidden_states
    assert sorted(rec) == [0, 1, 2] and all(len(v) == 1 for v in rec.values())
    for layer in (0, 1):  # the last entry of output_hidden_states has the final norm applied
        assert torch.allclose(rec[layer][0], states[layer + 1], atol=1e-6)
    norm = model.model.language_model.norm
    assert torch.allclose(norm(rec[2][0]), states[3], atol=1e-5)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_record_mlp_is_down_proj_input(arch):
    model, _, batch = _model_and_batch(arch)
    mlp = decoder_layers(model)[1].mlp
    seen = {}
    handle = mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    try:
        with torch.no_grad(), record_mlp(model, [1]) as rec:
            model(**batch)
    finally:
        handle.remove()
    act = rec[1][0]
    assert act.shape == (*seen["x"].shape[:2], num_neurons(model))
    with (
        torch.no_grad()
    ):  # the neurons are act_fn(gate_proj(x)) * up_proj(x), and down_proj of them is the MLP's output
        assert torch.allclose(act, mlp.act_fn(mlp.gate_proj(seen["x"])) * mlp.up_proj(seen["x"]), atol=1e-6)
        assert torch.allclose(mlp.down_proj(act), seen["y"], atol=1e-6)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_edits_change_the_output_as_intended(arch):
    model, processor, batch = _model_and_batch(arch)
    with torch.no_grad():
        base = model(**batch).logits
        with edit_hidden(model, {0: lambda h: None}), edit_mlp(model, {1: lambda a: None}):
            same = model(**batch).logits
        assert torch.equal(same, base)  # an edit returning None changes nothing
        # zeroing the last layer's output: the logits are the LM head of the final norm of zeros
        last = len(decoder_layers(model)) - 1
        with edit_hidden(model, {last: torch.zeros_like}):
            zeroed = model(**batch).logits
        hidden_size = model.config.text_config.hidden_size
        head = model.lm_head(model.model.language_model.norm(torch.zeros(1, 1, hidden_size)))
        assert torch.allclose(zeroed, head.expand_as(zeroed), atol=1e-5)
        # zeroing every neuron of a layer equals removing that MLP's contribution (no bias in down_proj)
        with record_hidden(model) as rec, edit_mlp(model, {1: torch.zeros_like}):
            model(**batch)
        with record_hidden(model) as plain:
            model(**batch)
        assert torch.allclose(rec[0][0], plain[0][0])  # layer 0 untouched
        assert not torch.allclose(rec[1][0], plain[1][0])
    # hooks are gone after the block
    assert all(not b._forward_hooks and not b.mlp.down_proj._forward_pre_hooks for b in decoder_layers(model))


def test_generate_runs_one_prefill_pass_then_one_token_per_pass():
    model, processor, batch = _model_and_batch("llava")
    with torch.no_grad(), record_hidden(model, [0]) as rec:
        model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    lengths = [h.shape[1] for h in rec[0]]
    assert lengths[0] == batch["input_ids"].shape[1] and lengths[1:] == [1, 1]


def test_bad_layer_is_a_clear_error():
    model, _, _ = _model_and_batch("llava")
    with pytest.raises(ValueError, match="out of range"), record_hidden(model, [7]):
        pass
