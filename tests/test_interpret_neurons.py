"""Safety neurons: change scores, neuron selections, dynamic activation patching, the safeguard's AUC."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from saferlhfv.evaluate import fit_logistic
from saferlhfv.interpret.hooks import decoder_layers, num_layers, num_neurons, record_mlp
from saferlhfv.interpret.neurons import (
    change_scores,
    greedy_tokens,
    last_prompt_neurons,
    overlap,
    patched_generate,
    random_neurons_like,
    restored_share,
    roc_auc,
    selection_size,
    top_neurons,
)
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.generation import encode_prompts, generate_responses, model_inputs
from tests.helpers import CORPUS, picture, tiny_model_config

QUESTIONS = ["what is in the picture?", "what is the best way to give these to a child?", "what is in the picture?"]


def _models(arch: str = "llava"):
    """A tiny VLM and an "aligned" copy that differs only in its MLPs' gate / up projections."""
    sft, processor = build_tiny_vlm(tiny_model_config(tiny_layers=2), CORPUS, arch=arch, seed=3)
    aligned = copy.deepcopy(sft)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in decoder_layers(aligned):
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight.add_(0.5 * lin.weight.std() * torch.randn(lin.weight.shape, generator=gen))
    sft.eval(), aligned.eval()
    images = [picture(), picture((20, 200, 20)), picture((20, 20, 200))]
    return sft, aligned, processor, images


@pytest.fixture(scope="module")
def models():
    return _models()


def _all(model):
    return {layer: torch.arange(num_neurons(model)) for layer in range(num_layers(model))}


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_patching_all_neurons_is_the_aligned_model_and_none_the_precursor(arch):
    sft, aligned, processor, images = _models(arch)
    plain = {name: generate_responses(m, processor, images, QUESTIONS, do_sample=False, max_new_tokens=12)
             for name, m in (("sft", sft), ("aligned", aligned))}  # fmt: skip
    assert plain["sft"] != plain["aligned"]  # the perturbation changes what the model writes
    every = patched_generate(sft, aligned, processor, images, QUESTIONS, _all(sft), max_new_tokens=12)
    empty = {layer: torch.zeros(0, dtype=torch.long) for layer in range(num_layers(sft))}
    none = patched_generate(sft, aligned, processor, images, QUESTIONS, empty, max_new_tokens=12)
    assert every == plain["aligned"]
    assert none == plain["sft"]
    some = patched_generate(sft, aligned, processor, images, QUESTIONS, {0: torch.arange(5)}, max_new_tokens=12)
    assert len(some) == len(QUESTIONS)
    # the precursor is left as it was: no hook survives
    assert generate_responses(sft, processor, images, QUESTIONS, do_sample=False, max_new_tokens=12) == plain["sft"]


def test_change_scores_by_hand(models):
    sft, aligned, processor, images = models
    answers, tokens = greedy_tokens(sft, processor, images[:2], QUESTIONS[:2], max_new_tokens=6)
    assert len(answers) == 2 and all(t.ndim == 1 and t.numel() >= 1 for t in tokens)
    scores = change_scores(sft, aligned, processor, images[:2], QUESTIONS[:2], tokens, batch_size=1)
    assert scores.shape == (num_layers(sft), num_neurons(sft))
    # by hand, one prompt at a time, no padding: positions from the last prompt token to the last answer token
    sq, n = torch.zeros_like(scores, dtype=torch.float64), 0
    for img, q, t in zip(images[:2], QUESTIONS[:2], tokens):
        enc = encode_prompts(processor, [img], [q])
        ids = torch.cat([enc["input_ids"], t[None]], dim=1)
        p = enc["input_ids"].shape[1]
        inputs = model_inputs(ids, torch.ones_like(ids), {"pixel_values": enc["pixel_values"]})
        acts = []
        for m in (sft, aligned):
            with torch.no_grad(), record_mlp(m) as rec:
                m(**inputs)
            acts.append(torch.stack([rec[layer][0][0, p - 1 :] for layer in sorted(rec)]))  # [L, R + 1, I]
        sq += (acts[1] - acts[0]).double().square().sum(1)
        n += t.numel() + 1
    assert torch.allclose(scores, (sq / n).sqrt().float(), atol=1e-5)
    # batched with padding gives the same scores; identical models score zero
    assert torch.allclose(change_scores(sft, aligned, processor, images[:2], QUESTIONS[:2], tokens), scores, atol=1e-5)
    assert change_scores(sft, sft, processor, images[:2], QUESTIONS[:2], tokens).abs().max() == 0


def test_top_and_random_neurons():
    scores = torch.tensor([[0.1, 5.0, 0.2, 3.0], [4.0, 0.0, 0.3, 0.4]])
    top = top_neurons(scores, 3)
    assert {k: v.tolist() for k, v in top.items()} == {0: [1, 3], 1: [0]}
    assert selection_size(top) == 3 and selection_size(top_neurons(scores, 0)) == 0
    rand = random_neurons_like(top, 4, torch.Generator().manual_seed(0))
    assert [len(rand[layer]) for layer in (0, 1)] == [2, 1]
    assert all(len(set(v.tolist())) == len(v) and v.max() < 4 for v in rand.values())
    with pytest.raises(ValueError):
        top_neurons(scores, 9)


def test_restored_share_auc_and_overlap():
    assert restored_share(0.5, 0.3, 0.7) == pytest.approx(0.5)
    assert math.isnan(restored_share(0.5, 0.3, 0.3))
    y = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    assert roc_auc(torch.tensor([0.1, 0.3, 0.3, 0.4]), y) == pytest.approx(0.875)  # one tie counts half
    a = {0: torch.tensor([0, 1]), 1: torch.tensor([2])}
    b = {0: torch.tensor([1]), 1: torch.tensor([2, 3])}
    o = overlap(a, b, total=8)
    assert o["shared"] == 2 and o["share"] == pytest.approx(2 / 3, abs=1e-4) and o["jaccard"] == pytest.approx(0.5)
    assert o["chance_share"] == pytest.approx(3 / 8)


def test_logistic_safeguard_separates_and_reads_last_prompt_token(models):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen)
    y = (x[:, 0] > 0).float()
    score = fit_logistic(x[:100], y[:100])
    assert roc_auc(score(x[100:]), y[100:]) > 0.95
    sft, _, processor, images = models
    acts = last_prompt_neurons(sft, processor, images, QUESTIONS, batch_size=2)
    assert acts.shape == (3, num_layers(sft), num_neurons(sft))
    enc = encode_prompts(processor, images[:1], QUESTIONS[:1])
    with torch.no_grad(), record_mlp(sft) as rec:
        sft(**enc)
    assert torch.allclose(acts[0, 1], rec[1][0][0, -1], atol=1e-5)
