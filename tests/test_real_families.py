"""Every real model family through every stage, on tiny random configs of the real classes.

LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL (``model.tiny_arch``), each with its own chat template
and special tokens: SFT, RM-V, CM-V and the guard take a few steps, PPO-Lagrangian one iteration in
both layouts (six models with LoRA; one shared base), the policy is saved and reloaded. The same
code path as the ``small`` and ``paper`` presets; only the sizes differ. Also the defects that only
real families showed (issue "real models at scale"): Qwen's per-token ``mm_token_type_ids`` in PPO,
the vision tower frozen in every stage, the critics' weight decay, every EOS id of the generation
config, and RM-V / CM-V reading their score where PPO reads it.
"""

from __future__ import annotations

import math

import pytest
import torch

from saferlhfv.config import load_config
from saferlhfv.data.world import rl_prompts
from saferlhfv.models.factory import TINY_ARCHS, build_tiny_vlm, load_saved_vlm, vision_tower
from saferlhfv.models.generation import (
    encode_prompts,
    end_at_eos,
    end_token_ids,
    generate_responses,
    model_inputs,
    response_mask,
)
from saferlhfv.models.score import ScoreModel, load_score_model, score_texts
from saferlhfv.stages import ensure
from saferlhfv.train.ppo import make_trainer
from tests.helpers import (
    CORPUS,
    SMALL_MODEL_AND_WORLD,
    picture,
    run_ppo_two_processes,
    tiny_model_config,
    upstream_artifacts,
)

#: the stages take a few optimiser steps each: these tests check mechanics on every family, not learning.
FEW_STEPS = SMALL_MODEL_AND_WORLD + [
    "sft.vision_steps=0",  # vision pretraining is the tiny LLaVA's stand-in for a pretrained encoder
    "sft.max_steps=2",
    "reward.max_steps=2",
    "cost.max_steps=2",
    "guard.max_steps=2",
    "guard.reading_steps=0",  # the guard's reading stage, like vision pretraining, is the tiny LLaVA's
    "guard.precursor_answers=0",
    "guard.rows_per_category=2",
    "data.max_response_tokens=6",
    "ppo.iterations=1",
    "ppo.save_every=0",
    "model.lora.enabled=true",
    "model.lora.r=4",
    "model.lora.alpha=8",
    "model.freeze_vision_tower=true",
]

LLAVA_15_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf's chat template: the answer ends with a space, no </s>
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _overrides(arch: str) -> list[str]:
    return FEW_STEPS + [f"model.tiny_arch={arch}"]


@pytest.fixture(scope="module", params=TINY_ARCHS)
def family(request, tmp_path_factory):
    """``(arch, artifacts folder, cfg, upstream dirs, guard folder)``: SFT, RM-V, CM-V and the guard of ``arch``."""
    arch = request.param
    art = tmp_path_factory.mktemp(f"artifacts-{arch}")
    with upstream_artifacts(art, _overrides(arch)) as dirs:
        cfg = load_config("tiny", overrides=_overrides(arch))
        yield arch, art, cfg, dirs, ensure("guard_model", cfg)[0]


def _vision_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in vision_tower(model).named_parameters()}


def test_upstream_stages_run_and_keep_the_vision_tower(family):
    """SFT, RM-V, CM-V and the guard train on every family; with model.freeze_vision_tower none of the
    later stages changes the precursor's vision tower (before: RM-V / CM-V fine-tuned it)."""
    arch, _, _, dirs, guard_dir = family
    sft, processor = load_saved_vlm(dirs["sft_dir"] / "model")
    classes = {"llava": "Llava", "llava_next": "LlavaNext", "qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL"}
    assert type(sft).__name__ == f"{classes[arch]}ForConditionalGeneration"
    reference = _vision_params(sft)
    for kind in ("reward_dir", "cost_dir"):
        scorer, _ = load_score_model(dirs[kind] / "model")
        after = _vision_params(scorer.backbone)
        assert after.keys() == reference.keys()
        assert all(torch.equal(after[n], reference[n]) for n in reference), f"{kind}: vision tower changed"
        # but the language model did train (its LoRA adapter, merged)
        lm = [(a - b).abs().max().item() for (n, a), (_, b) in
              zip(scorer.backbone.named_parameters(), sft.named_parameters()) if "language_model" in n]  # fmt: skip
        assert max(lm) > 0
    assert (guard_dir / "model").is_dir()


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_one_ppo_iteration_then_save_and_reload(family, layout, tmp_path):
    """A PPO-Lagrangian iteration in both layouts (before the fix Qwen crashed in get_rope_index: the
    rollout fed prompt-length mm_token_type_ids with prompt + answer ids); the saved policy reloads and
    answers."""
    arch, _, cfg, dirs, _ = family
    overrides = _overrides(arch) + (["ppo.shared_base=true"] if layout == "shared" else [])
    cfg = load_config("tiny", overrides=overrides)
    trainer = make_trainer(cfg, out_dir=tmp_path / "ppo", **dirs)
    result = trainer.train()
    assert result["iterations"] == 1 and math.isfinite(result["final_lambda"])
    assert math.isfinite(result["last"]["reward"]) and math.isfinite(result["last"]["cost"])
    for role in ("actor", "reward_critic", "cost_critic"):
        if layout == "separate":  # the vision tower of every trainable role is frozen (model.freeze_vision_tower)
            model = trainer.roles.unwrap(getattr(trainer.roles, role))
            backbone = getattr(model, "backbone", model)
            assert not any(p.requires_grad for p in vision_tower(backbone).parameters()), role
    trainer.roles.save_policy(tmp_path / "policy")
    policy, processor = load_saved_vlm(tmp_path / "policy")
    rows = rl_prompts(cfg.data, "evaluation").select(range(2))
    answers = generate_responses(policy, processor, list(rows["image"]), list(rows["question"]), max_new_tokens=4)
    assert len(answers) == 2


def test_critics_without_weight_decay_and_the_reference_betas(family, tmp_path):
    """Critics' AdamW get weight decay 0 (AdamW's default is 0.01), the actor ppo.weight_decay; both the
    betas (0.9, ppo.adam_beta2); a cosine schedule with warm-up follows transformers' formula."""
    arch, _, _, dirs, _ = family
    if arch != "qwen2_5_vl":
        pytest.skip("optimiser settings do not depend on the family: checked once")
    cfg = load_config("tiny", overrides=_overrides(arch) + [
        "ppo.weight_decay=0.05", "ppo.adam_beta2=0.95", "ppo.lr_scheduler=cosine", "ppo.lr_warmup_ratio=0.5",
        "ppo.iterations=2", "ppo.learning_rate=1e-3"])  # fmt: skip
    trainer = make_trainer(cfg, out_dir=tmp_path / "ppo", **dirs)
    groups = {role: trainer.roles.optimizer(role).param_groups[0] for role in ("actor", "reward_critic", "cost_critic")}
    assert groups["actor"]["weight_decay"] == 0.05
    assert groups["reward_critic"]["weight_decay"] == groups["cost_critic"]["weight_decay"] == 0.0
    assert all(g["betas"] == (0.9, 0.95) for g in groups.values())
    # 2 iterations x 1 epoch x ceil(4 / 2) minibatches = 4 steps, 2 of warm-up: lr 0 at the start
    assert groups["actor"]["lr"] == 0.0
    trainer.train(stop_after=1)  # 2 steps: the end of the warm-up, the peak rate
    assert groups["actor"]["lr"] == pytest.approx(1e-3)
    resumed = make_trainer(cfg, out_dir=tmp_path / "ppo", **dirs)
    resumed.train()  # 2 more steps of the cosine: 0.5 * (1 + cos(pi * 2 / 2)) = 0 at the last
    assert resumed.roles.optimizer("actor").param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert resumed.roles.schedulers["actor"].last_epoch == 4  # the schedule resumed from the checkpoint


def test_two_processes_on_qwen(family, tmp_path):
    """torchrun with two processes (gloo, CPU) of one PPO iteration on Qwen2.5-VL."""
    arch, art, _, _, _ = family
    if arch != "qwen2_5_vl":
        pytest.skip("one Qwen family is enough for the multi-process path")
    result = run_ppo_two_processes(art, tmp_path / "ppo", _overrides(arch))
    assert result["processes"] == 2 and result["ranks_agree"] is True
    assert result["iterations"] == 1


# --------------------------------------------------------------------------- unit checks of the defects


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_training_reads_the_score_where_ppo_reads_it(arch):
    """RM-V / CM-V trained on template-rendered answers read their end score at the answer's EOS, the
    token PPO reads on a sampled answer (before: Qwen's template put a newline after <|im_end|>, so
    training read one token later); the two scores are equal."""
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch=arch)
    scorer = ScoreModel(model).eval()
    img, question, answer = picture(), "what is in the picture?", "a red knife."
    batch = encode_prompts(processor, [img], [question], [answer], padding_side="right")
    ends = end_token_ids(model, processor)
    assert batch["input_ids"][0, -1].item() in ends
    # the PPO side: the prompt (left padded beside a longer one) + the answer's tokens as sampled
    prompt = encode_prompts(processor, [img, img], [question, question + " and why is it there?"])
    n_prompt = int(encode_prompts(processor, [img], [question])["attention_mask"].sum())
    answer_ids = batch["input_ids"][0, n_prompt:]
    width = prompt["input_ids"].shape[1]
    ids = torch.cat([prompt["input_ids"][:1], answer_ids[None]], dim=1)
    mask = torch.cat([prompt["attention_mask"][:1], torch.ones_like(answer_ids)[None]], dim=1)
    vision = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask")}
    if "image_grid_thw" in vision:  # one picture of the two (Qwen concatenates the pictures' patches)
        half = len(vision["pixel_values"]) // 2
        vision = {"pixel_values": vision["pixel_values"][:half], "image_grid_thw": vision["image_grid_thw"][:1],
                  "mm_token_type_ids": vision["mm_token_type_ids"][:1]}  # fmt: skip
    else:
        vision = {k: v[:1] for k, v in vision.items()}
    inputs = model_inputs(ids, mask, vision)
    inputs.pop("position_ids", None)
    with torch.no_grad():
        ppo_score = scorer(**inputs).end_scores.item()
    assert ids[0, -1].item() in ends and ids.shape[1] > width
    assert score_texts(scorer, processor, [img], [question], [answer])[0] == pytest.approx(ppo_score, abs=1e-4)


def test_end_at_eos_for_every_template():
    """Qwen: cut the newline after <|im_end|>; LLaVA-NeXT: the space after </s>; LLaVA-1.5's template,
    which writes no </s>: add it."""
    assert end_at_eos("<|im_start|>assistant\nhi<|im_end|>\n", "<|im_end|>") == "<|im_start|>assistant\nhi<|im_end|>"
    assert end_at_eos("[INST] q [/INST] hi</s> ", "</s>") == "[INST] q [/INST] hi</s>"
    assert end_at_eos("USER: q ASSISTANT: hi ", "</s>") == "USER: q ASSISTANT: hi</s>"
    _, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch="llava")
    processor.chat_template = LLAVA_15_TEMPLATE
    batch = encode_prompts(processor, [picture()], ["q"], ["hi"], padding_side="right")
    assert batch["input_ids"][0, -1].item() == processor.tokenizer.eos_token_id


def test_every_eos_id_of_the_generation_config_ends_an_answer():
    """Qwen2-VL-Instruct stops on <|im_end|> and on <|endoftext|>: both end the response mask (before:
    only tokenizer.eos_token_id, so an answer ended by <|endoftext|> ran on into padding)."""
    model, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch="qwen2_vl")
    tok = processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert end_token_ids(model, processor) == sorted({im_end, endoftext})
    generated = torch.tensor([[5, 6, endoftext, 7, 8], [5, im_end, 9, 9, 9], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(response_mask(generated, end_token_ids(model, processor)), expected)
    assert torch.equal(response_mask(generated, im_end)[0], torch.ones(5, dtype=torch.long))  # one id: runs on


def test_model_inputs_extend_qwen_token_types_over_the_answer():
    """Prompt-length mm_token_type_ids [B, P] are extended with text (0) to the ids' length [B, L]."""
    types = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    vision = {"mm_token_type_ids": types, "image_grid_thw": torch.ones(2, 3)}
    inputs = model_inputs(torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 7), vision)
    assert torch.equal(inputs["mm_token_type_ids"], torch.tensor([[0, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]))


def test_ppo_under_deepspeed_says_what_to_launch_instead(tmp_path):
    """accelerate prepares one model per Accelerator under DeepSpeed (an AssertionError deep inside it);
    PPO's actor + critics stop first with a ConfigError that names the ddp launch and the shared base."""
    from types import SimpleNamespace

    from saferlhfv.config import ConfigError
    from saferlhfv.train.ppo.roles import SeparateRoles

    fake = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=object()))
    cfg = load_config("paper")
    with pytest.raises(ConfigError, match=r"ddp\.yaml.*ppo\.shared_base=true"):
        SeparateRoles(cfg, fake, sft_dir=tmp_path, reward_dir=tmp_path, cost_dir=tmp_path)
