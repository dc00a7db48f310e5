"""Vision pretraining of the tiny VLM (stage 0 of SFT): the vision tower learns to tell the objects apart."""

import json

import pytest
import torch

from saferlhfv.config import load_config
from saferlhfv.data.world import text_corpus
from saferlhfv.models.factory import build_tiny_vlm, language_model, load_vlm, vision_tower
from saferlhfv.train.sft import ObjectProbe, pretrain_vision
from tests.helpers import CORPUS, SMALL_MODEL_AND_WORLD, tiny_model_config


def test_vision_pretraining_learns_the_objects_and_leaves_the_decoder(tmp_path):
    cfg = load_config("tiny", overrides=SMALL_MODEL_AND_WORLD + ["sft.vision_steps=150", "sft.caption_examples=600"])
    model, processor = load_vlm(cfg.model, text_corpus(cfg.data))
    vision_before = [p.detach().clone() for p in vision_tower(model).parameters()]
    decoder_before = [p.detach().clone() for p in language_model(model).parameters()]
    result = pretrain_vision(model, processor, cfg, tmp_path)
    # 30 objects: chance is 0.033 on the 200 held-out pictures
    assert result["vision_steps"] == 150 and result["vision_accuracy"] > 0.25, result
    # the accuracy curve over steps: ten points (every 15 steps, the last at the end), rising
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("split") == "eval"]
    assert [e["step"] for e in evals] == list(range(15, 151, 15))
    assert evals[-1]["vision_accuracy"] == result["vision_accuracy"] > evals[0]["vision_accuracy"]
    assert any(not torch.equal(a, b) for a, b in zip(vision_before, vision_tower(model).parameters()))
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, language_model(model).parameters()))


def test_object_probe_needs_a_llava_model():
    model, _ = build_tiny_vlm(tiny_model_config(), CORPUS, arch="qwen2_vl")
    with pytest.raises(ValueError, match="LLaVA-architecture"):
        ObjectProbe(model, 30)
