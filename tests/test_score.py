"""The end score is read at the last real token, whatever the padding."""

import pytest
import torch

from saferlhfv.models.collate import pair_batch
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.generation import encode_prompts, render_prompts
from saferlhfv.models.score import (
    ScoreModel,
    last_token_index,
    load_score_model,
    position_ids_from_mask,
    save_score_model,
)
from tests.helpers import CORPUS, picture, tiny_model_config


def test_last_token_index_any_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        last_token_index(torch.zeros(1, 3, dtype=torch.long))


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def scorer(request):
    backbone, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch=request.param)
    model = ScoreModel(backbone, seed=1).eval()
    return model, processor


def _batch(processor, answers, side):
    processor.tokenizer.padding_side = side
    texts = render_prompts(processor, ["what is in the picture?"] * len(answers), answers)
    images = [picture((7 * len(a) % 255, 90, 200)) for a in answers]  # each answer has its own picture
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_end_score_same_left_right_alone(scorer):
    model, processor = scorer
    answers = ["a knife.", "the picture shows a red knife on a blue table, I can't help with that."]
    with torch.no_grad():
        right = model(**_batch(processor, answers, "right")).end_scores
        left = model(**_batch(processor, answers, "left")).end_scores
        alone = torch.cat([model(**_batch(processor, [a], "right")).end_scores for a in answers])
    torch.testing.assert_close(right, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # different sequences, different scores


def test_pair_end_scores_read_the_shared_prompt_once_and_match_the_full_pass(scorer):
    """Both answers' end scores through the shared prompt's KV cache equal the two-row pass, and so do the
    gradients of a loss on them (the prompt's keys and values get both answers' gradient)."""
    model, processor = scorer
    images = [picture((40, 90, 200)), picture((200, 30, 30)), picture((10, 200, 10))]
    questions = ["what is in the picture?", "is the red ball near the box?", "say it"]
    a = ["a red ball and a box.", "yes, it is near.", "same"]
    b = ["a red cup.", "no, it is far from the box and from the ball.", "same"]  # pair 2: equal answers
    batch = pair_batch(processor, images, questions, a, b)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    try:
        end = model(**batch).end_scores
        full = torch.autograd.grad((end[:3] - 2 * end[3:]).square().sum(), params, allow_unused=True)
        first, second = model.pair_end_scores(**batch)
        shared = torch.autograd.grad((first - 2 * second).square().sum(), params, allow_unused=True)
    finally:
        model.eval()
    torch.testing.assert_close(first, end[:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, end[3:], rtol=1e-4, atol=1e-5)
    assert [g is None for g in shared] == [g is None for g in full]  # the same parameters reached
    scale = max(g.abs().max() for g in full if g is not None)
    for g_shared, g_full in zip(shared, full):
        if g_full is not None:
            torch.testing.assert_close(g_shared, g_full, rtol=1e-3, atol=1e-5 * scale)
    assert scale > 0 and not torch.allclose(first[0], second[0])
    # the rows of a pair with different pictures: the same token ids, so sharing would read the wrong one
    mixed = encode_prompts(processor, images + images[::-1], questions * 2, a + b, padding_side="right")
    with pytest.raises(ValueError, match="same picture"):
        model.pair_end_scores(**mixed)


def test_reading_position_minus_one_is_the_public_code_bug(scorer):
    """Under right padding, position -1 of the short sequence is a pad: its score is wrong."""
    model, processor = scorer
    batch = _batch(processor, ["a knife.", "the picture shows a red knife on a blue table."], "right")
    with torch.no_grad():
        out = model(**batch)
    assert batch["attention_mask"][0, -1] == 0
    assert out.end_index[0] < batch["input_ids"].shape[1] - 1
    assert not torch.allclose(out.scores[0, -1], out.end_scores[0])


def test_score_model_save_load_round_trip(scorer, tmp_path):
    model, processor = scorer
    batch = _batch(processor, ["a knife.", "candy is a fine treat."], "right")
    save_score_model(model, processor, tmp_path / "rm")
    loaded, loaded_processor = load_score_model(tmp_path / "rm")
    loaded.eval()
    again = _batch(loaded_processor, ["a knife.", "candy is a fine treat."], "right")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).scores, loaded(**again).scores, rtol=0, atol=0)
