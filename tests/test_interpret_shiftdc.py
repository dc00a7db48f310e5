"""ShiftDC: projections and calibration on hand-made vectors, and the prefill-only edit on a tiny VLM."""

from __future__ import annotations

import pytest
import torch

from saferlhfv.interpret.hooks import record_hidden
from saferlhfv.interpret.shiftdc import (
    calibrate,
    calibrated,
    caption_question,
    generate_calibrated,
    last_token_states,
    neutral_picture,
    project,
    safety_component,
    safety_directions,
    upper_half,
)
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.generation import encode_prompts, generate_responses
from tests.helpers import CORPUS, picture, tiny_model_config

QUESTIONS = ["what is the best way to give these to a child?", "what is in the picture?"]


def test_project_on_hand_made_vectors():
    assert project(torch.tensor([3.0, 4.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(3.0)
    assert project(torch.tensor([3.0, 4.0, 0.0]), torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.5)  # 6 / 4
    assert project(torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])) == pytest.approx(0.0)
    assert project(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])) == pytest.approx(2.0)  # v = 2 s
    # [N, L, H] against [L, H]: one coefficient per prompt and layer
    v = torch.tensor([[[1.0, 0.0], [0.0, 3.0]], [[2.0, 2.0], [1.0, 1.0]]])
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(project(v, s), torch.tensor([[1.0, 1.5], [2.0, 0.5]]))
    component = safety_component(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    assert torch.allclose(component, torch.tensor([0.0, 4.0]))


def test_safety_directions_are_the_mean_difference():
    unsafe = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # [N=2, L=1, H=2]
    safe = torch.tensor([[[0.0, 0.0]], [[2.0, 2.0]]])
    s = safety_directions(unsafe, safe)
    assert s.shape == (1, 2) and torch.allclose(s, torch.tensor([[1.0, 2.0]]))
    # unsafe mean projects exactly 1 above the safe mean
    assert project(unsafe.mean(0) - safe.mean(0), s) == pytest.approx(torch.tensor([1.0]))
    with pytest.raises(ValueError):
        safety_directions(unsafe, torch.zeros(2, 1, 3))


def test_calibrate_removes_exactly_the_safety_component():
    h, m, s = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    assert torch.allclose(calibrate(h, m, s, alpha=1.0), torch.tensor([1.0, 1.0]))  # h - 1 * (1, 0)
    assert torch.allclose(calibrate(h, m, s, alpha=0.5), torch.tensor([1.5, 1.0]))
    assert torch.allclose(calibrate(h, m, s, alpha=1.0, mode="whole"), torch.tensor([1.0, 0.0]))  # h - m
    assert torch.allclose(calibrate(h, m, s, alpha=0.0), h)
    g = torch.Generator().manual_seed(0)
    h, m, s = (torch.randn(5, 16, generator=g) for _ in range(3))
    out = calibrate(h, m, s, alpha=1.0)
    assert torch.allclose(project(out, s), project(h - m, s), atol=1e-5)  # the caption state's projection
    change = out - h  # parallel to s: nothing orthogonal to s moves
    orth = change - safety_component(change, s)
    assert orth.abs().max() < 1e-5
    with pytest.raises(ValueError):
        calibrate(h, m, s, alpha=1.0, mode="half")


def test_text_carried_version_of_a_request():
    assert caption_question({"object": "pills"}, "how much of this can i take?") == (
        "the picture shows some pills. how much of this can i take?"
    )
    img = neutral_picture(32)
    assert img.size == (32, 32) and len(img.getcolors()) == 1
    assert upper_half(4) == [2, 3] and upper_half(5) == [2, 3, 4]


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_vlm(tiny_model_config(tiny_layers=4), CORPUS, seed=3)
    model.eval()
    images = [picture(), picture((20, 200, 20))]
    text_images = [neutral_picture(64)] * 2
    text_questions = [caption_question({"object": "pills"}, q) for q in QUESTIONS]
    h_image = last_token_states(model, processor, images, QUESTIONS)  # [2, 4, H]
    h_text = last_token_states(model, processor, text_images, text_questions)
    directions = torch.randn(h_image.shape[1:], generator=torch.Generator().manual_seed(1))  # [4, H]
    return model, processor, images, h_image, h_text, directions


def test_last_token_states_shape_and_left_padding(tiny):
    model, processor, images, h_image, _, _ = tiny
    assert h_image.shape == (2, 4, model.config.text_config.hidden_size)
    one = last_token_states(model, processor, images[1:], QUESTIONS[1:])  # alone: no padding
    assert torch.allclose(one[0], h_image[1], atol=1e-4)


@pytest.mark.parametrize("mode", ["safety", "whole"])
def test_calibrated_edits_the_last_prompt_token_of_the_first_edited_layer_as_intended(tiny, mode):
    model, processor, images, h_image, h_text, directions = tiny
    layers = upper_half(4)
    shifts = h_image - h_text
    batch = encode_prompts(processor, images, QUESTIONS)
    with torch.no_grad(), record_hidden(model, layers) as plain:
        model(**batch)
    with torch.no_grad():
        with calibrated(model, directions=directions[layers], shifts=shifts[:, layers], layers=layers, alpha=1.0,
                        mode=mode), record_hidden(model, layers) as edited:  # fmt: skip
            model(**batch)
    first = layers[0]
    new, old = edited[first][0], plain[first][0]
    assert torch.allclose(new[:, :-1], old[:, :-1])  # only the last prompt token moves
    if mode == "safety":
        assert torch.allclose(project(new[:, -1], directions[first]), project(h_text[:, first], directions[first]),
                              atol=1e-4)  # fmt: skip
        assert not torch.allclose(new[:, -1], h_text[:, first], atol=1e-3)  # the rest of the shift stays
    else:
        assert torch.allclose(new[:, -1], h_text[:, first], atol=1e-4)  # the whole shift: the caption state


def test_calibration_acts_during_the_prefill_only(tiny):
    model, processor, images, h_image, h_text, directions = tiny
    layers = upper_half(4)
    shifts = (h_image - h_text)[:, layers]
    batch = encode_prompts(processor, images, QUESTIONS)
    with torch.no_grad(), record_hidden(model, layers) as before:  # registered first: sees the unedited output
        with calibrated(model, directions=directions[layers], shifts=shifts, layers=layers, alpha=1.0):
            with record_hidden(model, layers) as after:
                model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=True)
    for layer in layers:
        assert before[layer][0].shape[1] > 1 and len(before[layer]) > 1
        assert not torch.allclose(before[layer][0][:, -1], after[layer][0][:, -1])  # the prefill is edited
        for b, a in zip(before[layer][1:], after[layer][1:]):  # decode steps: T = 1, untouched
            assert b.shape[1] == 1 and torch.equal(b, a)


def test_alpha_zero_leaves_greedy_answers_unchanged(tiny):
    model, processor, images, h_image, h_text, directions = tiny
    layers = upper_half(4)
    kw = dict(max_new_tokens=6)
    plain = generate_responses(model, processor, images, QUESTIONS, do_sample=False, **kw)
    shifts = (h_image - h_text)[:, layers] * 100
    same = generate_calibrated(model, processor, images, QUESTIONS, directions=directions[layers], shifts=shifts,
                               layers=layers, alpha=0.0, **kw)  # fmt: skip
    assert same == plain


def test_calibrated_checks_shapes(tiny):
    model, _, _, h_image, _, directions = tiny
    with pytest.raises(ValueError), calibrated(model, directions=directions[:1], shifts=h_image[:, :2], layers=[2, 3],
                                               alpha=1.0):  # fmt: skip
        pass
    with pytest.raises(ValueError), calibrated(model, directions=directions[2:], shifts=h_image[:, 2:], layers=[2, 3],
                                               alpha=1.0, mode="half"):  # fmt: skip
        pass
