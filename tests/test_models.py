"""Model factory: tiny LLaVA / Qwen2-VL builds, generation, save/load, LoRA, offline errors."""

import pytest
import torch

from saferlhfv.config import LoraConfig, ModelConfig
from saferlhfv.models.factory import (
    ModelNotAvailableError,
    apply_lora,
    build_tiny_vlm,
    count_parameters,
    load_pretrained_vlm,
    load_saved_vlm,
    load_vlm,
    save_vlm,
    train_tokenizer,
    vision_tower,
)
from saferlhfv.models.generation import render_prompts
from tests.helpers import CORPUS, picture, tiny_model_config


def test_tokenizer_round_trips_any_text():
    tok = train_tokenizer(CORPUS, vocab_size=400)
    for text in ["crush the pills", "zzq!! ünïcode 123", ""]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>" and tok.image_token == "<image>"
    assert len(tok) <= 400


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_tiny_forward_generate_and_save_load(arch, tmp_path):
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch=arch)
    model.eval()
    processor.tokenizer.padding_side = "left"
    texts = render_prompts(processor, ["what is in the picture?", "what is the best way to give these to a child?"])
    batch = processor(images=[picture(), picture((20, 200, 20))], text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[2] == len(processor.tokenizer)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    n_prompt = batch["input_ids"].shape[1]
    assert out.shape[0] == 2 and n_prompt < out.shape[1] <= n_prompt + 6
    assert torch.equal(out[:, :n_prompt], batch["input_ids"])  # generate continues the prompt

    save_vlm(model, processor, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded, loaded_processor = load_saved_vlm(tmp_path / "m")
    loaded.eval()
    again = loaded_processor(images=[picture(), picture((20, 200, 20))], text=texts, return_tensors="pt", padding=True)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded(**again).logits, logits)
    assert torch.equal(loaded.generate(**again, max_new_tokens=6, do_sample=False), out)


def test_tiny_preset_model_size_and_determinism():
    cfg = ModelConfig()  # the tiny preset's architecture
    a, _ = build_tiny_vlm(cfg, CORPUS)
    b, _ = build_tiny_vlm(cfg, CORPUS)
    n = count_parameters(a)
    assert 300_000 < n < 3_000_000, n
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c, _ = build_tiny_vlm(cfg, CORPUS, seed=1)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_save_is_atomic_on_failure(tmp_path):
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    save_vlm(model, processor, tmp_path / "m")

    class Broken:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_vlm(model, Broken(), tmp_path / "m")
    load_saved_vlm(tmp_path / "m")  # the earlier save is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind


def test_lora_only_in_language_model_and_frozen_vision():
    cfg = tiny_model_config(freeze_vision_tower=True, lora=LoraConfig(enabled=True, r=4, alpha=8))
    model, _ = load_vlm(cfg, corpus=CORPUS)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_names)
    assert not any(p.requires_grad for p in vision_tower(model).parameters())
    base, _ = build_tiny_vlm(tiny_model_config(), CORPUS)
    assert count_parameters(apply_lora(base, LoraConfig(r=4)), trainable_only=True) < count_parameters(base) / 5


def test_real_model_offline_says_what_to_do():
    with pytest.raises(ModelNotAvailableError, match="tiny preset"):
        load_pretrained_vlm(ModelConfig(family="llava", name_or_path="llava-hf/llava-1.5-7b-hf"))
    with pytest.raises(ValueError, match="model.family"):
        load_pretrained_vlm(ModelConfig(family="gpt2"))
    with pytest.raises(ValueError, match="corpus"):
        load_vlm(ModelConfig())


def test_generate_responses_seeded_and_leaves_caller_rng_alone():
    from saferlhfv.models.generation import generate_responses

    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    images, questions = [picture(), picture((20, 200, 20))], ["what is in the picture?", "what is this?"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_responses(model, processor, images, questions, max_new_tokens=8, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_responses(model, processor, images, questions, max_new_tokens=8, seed=7)
    c = generate_responses(model, processor, images, questions, max_new_tokens=8, seed=8)
    assert a == b and a != c and len(a) == 2 and all(isinstance(t, str) for t in a)
    assert model.training  # generation restores the train / eval mode it found


def test_item_seeded_sampling_is_the_same_answer_whatever_the_batch():
    """An item's answer depends on its own seed only: alone, first or last in a batch, beside other items."""
    from saferlhfv.models.generation import generate_answers

    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    images = [picture(), picture((20, 200, 20)), picture((200, 20, 20))]
    questions = ["what is in the picture?", "what is this?", "how do i use this?"]
    kw = dict(max_new_tokens=10, seed=0)
    full = generate_answers(model, processor, images, questions, item_seeds=[11, 12, 13], **kw)
    alone = generate_answers(model, processor, images[2:], questions[2:], item_seeds=[13], **kw)
    moved = generate_answers(model, processor, images[::-1], questions[::-1], item_seeds=[13, 12, 11], **kw)
    in_twos = generate_answers(model, processor, images, questions, item_seeds=[11, 12, 13], batch_size=2, **kw)
    assert alone == full[2:] and moved == full[::-1] and in_twos == full
    other = generate_answers(model, processor, images, questions, item_seeds=[21, 22, 23], **kw)
    assert other != full  # a different seed draws a different answer (an untrained model is near-uniform)
    with pytest.raises(ValueError, match="item seeds"):
        generate_answers(model, processor, images, questions, item_seeds=[1], **kw)
    with pytest.raises(ValueError, match="do_sample"):
        generate_answers(model, processor, images, questions, item_seeds=[1, 2, 3], do_sample=False, **kw)


def test_item_seeded_sampling_draws_from_softmax_of_logits_over_temperature():
    """Gumbel-max: the share of each token over many seeds matches softmax(logits / T)."""
    from saferlhfv.models.generation import ItemSeededSampling

    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    n, temperature = 4000, 2.0
    counts = torch.zeros(4)
    for s in range(n):
        out = ItemSeededSampling([s], temperature)(None, logits.clone())
        counts[out.argmax(-1)] += 1
    expected = torch.softmax(logits / temperature, -1)[0]
    assert counts[3] == 0  # a suppressed token (-inf) is never drawn
    assert torch.allclose(counts / n, expected, atol=0.03), (counts / n, expected)
    a = ItemSeededSampling([5, 6], 1.0)(None, torch.zeros(2, 4))
    assert not torch.equal(a[0], a[1])  # rows draw from their own generators


def test_generation_never_samples_the_image_placeholder():
    from saferlhfv.models.generation import generate_responses, media_token_ids

    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert media_token_ids(processor) == [image_id]
    with torch.no_grad():  # make the placeholder the most likely next token everywhere
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[image_id] = 100.0
    out = generate_responses(model, processor, [picture()] * 4, ["what is this?"] * 4, max_new_tokens=6, seed=0)
    assert all(t for t in out)  # without suppression every token would be <image>, decoded to ""
