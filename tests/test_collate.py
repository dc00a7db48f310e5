"""Batches: SFT labels cover exactly the response; pairs stack a-rows then b-rows."""

import torch

from saferlhfv.models.collate import IGNORE_INDEX, blank_like, pair_batch, sft_batch
from saferlhfv.models.factory import build_tiny_vlm
from tests.helpers import CORPUS, picture, tiny_model_config


def test_sft_labels_are_the_response_and_eos_only():
    _, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    tok = processor.tokenizer
    responses = ["a knife.", "candy is a fine treat in small amounts, after a meal."]
    batch = sft_batch(processor, [picture(), picture()], ["what is in the picture?", "what is this?"], responses)
    for row, response in enumerate(responses):
        supervised = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tok.decode(supervised) == " " + response + tok.eos_token
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_pair_batch_layout():
    _, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    batch = pair_batch(processor, [picture(), picture()], ["q one?", "q two?"], ["a1", "a2"], ["b1 longer", "b2"])
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4
    texts = processor.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert [t.rstrip().split("ASSISTANT: ")[-1] for t in texts] == ["a1", "a2", "b1 longer", "b2"]
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][2])


def test_blank_like_keeps_size():
    img = picture(size=50)
    blank = blank_like(img)
    assert blank.size == img.size and blank.getextrema() == ((128, 128),) * 3
