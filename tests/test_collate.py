"""Batches: SFT labels cover exactly the response; pairs stack a-rows then b-rows; a pair's shared prefix."""

import pytest
import torch

from saferlhfv.models.collate import IGNORE_INDEX, blank_like, pair_batch, sft_batch, split_shared_prefix
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


def test_split_shared_prefix_by_hand():
    # pair 0: "5 6 7" shared, answers "8 9" and "4"; pair 1: the answers are equal ("3 3"), so the prefix
    # stops one token short of their end; a-rows first, right padding (0).
    ids = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 3, 0], [5, 6, 7, 4, 0], [1, 2, 3, 3, 0]])
    mask = (torch.arange(5)[None] < torch.tensor([5, 4, 4, 4])[:, None]).long()
    cut = split_shared_prefix(ids, mask)
    assert cut.prefix_ids.tolist() == [[5, 6, 7], [1, 2, 3]]  # pair 1: 3 of its 4 tokens, left-padded to 3
    assert cut.prefix_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert cut.suffix_ids.tolist() == [[8, 9], [4, 0], [3, 0], [3, 0]]  # rows 2i, 2i + 1: pair i's a, b
    assert cut.suffix_mask.tolist() == [[1, 1], [1, 0], [1, 0], [1, 0]]
    assert cut.full_mask().tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    # prefixes of different lengths: the shorter one is left-padded and its index points at column 0
    ids = torch.tensor([[5, 6, 8], [5, 1, 0], [5, 6, 9], [5, 2, 0]])
    mask = (ids > 0).long()
    cut = split_shared_prefix(ids, mask)
    assert cut.prefix_ids.tolist() == [[5, 6], [0, 5]] and cut.prefix_mask.tolist() == [[1, 1], [0, 1]]
    assert cut.prefix_index.tolist() == [[0, 1], [0, 0]]
    assert cut.suffix_ids.tolist() == [[8], [9], [1], [2]]


def test_split_shared_prefix_rejects_bad_layouts():
    with pytest.raises(ValueError, match="even number"):
        split_shared_prefix(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="right padding"):
        split_shared_prefix(torch.ones(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [1, 1, 1]]))


def test_blank_like_keeps_size():
    img = picture(size=50)
    blank = blank_like(img)
    assert blank.size == img.size and blank.getextrema() == ((128, 128),) * 3
