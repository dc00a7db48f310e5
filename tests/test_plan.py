"""`python -m saferlhfv.bench --plan`: exact counts on the meta device, the arithmetic against the measured layouts,
the activation formula and the fits / does-not-fit verdict on hand-computed cases."""

import pytest

from saferlhfv.bench import memory
from saferlhfv.bench.measure import _untrained_upstream
from saferlhfv.bench.memory import measure_layout
from saferlhfv.bench.plan import (
    GIB,
    PLAN_LAYOUTS,
    Block,
    RoleMemory,
    count_model,
    hf_config,
    layer_activation_bytes,
    logprob_bytes,
    model_counts,
    per_gpu_bytes,
    plan_memory,
    role_memory_plan,
    stack_activation_bytes,
    verdict,
)
from saferlhfv.bench.report import main
from saferlhfv.config import LoraConfig, apply_overrides, load_config
from tests.helpers import SMALL_MODEL_AND_WORLD


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("llava-hf/llava-1.5-7b-hf", 7.06e9),
        ("Qwen/Qwen2-VL-2B-Instruct", 2.21e9),
        ("Qwen/Qwen2-VL-7B-Instruct", 8.29e9),
        ("llava-hf/llava-v1.6-mistral-7b-hf", 7.57e9),
        ("Qwen/Qwen2.5-VL-7B-Instruct", 8.29e9),
    ],
)
def test_parameter_counts_of_the_real_classes_on_the_meta_device(name, published):
    counts = count_model(hf_config(name), dtype="bfloat16", lora=LoraConfig(r=16), image_side=224)
    assert counts.parameters == pytest.approx(published, rel=0.005)


def test_llava_7b_counts_by_hand():
    c = count_model(hf_config("llava-hf/llava-1.5-7b-hf"), dtype="bfloat16", lora=LoraConfig(r=16), image_side=336)
    assert c.parameters == 7_063_427_072
    assert c.lm_head_parameters == 32064 * 4096  # untied
    assert c.vision_parameters == 303_507_456  # CLIP ViT-L/14-336
    # r * (in + out) of q, k, v, o (4096 -> 4096), gate and up (4096 -> 11008) and down, in each of 32 layers
    assert c.adapter_parameters == 16 * (4 * 8192 + 3 * (4096 + 11008)) * 32
    assert (c.image_tokens, c.vision_tokens) == (576, 577)  # 24 x 24 patches; the tower also sees CLS
    assert (c.decoder.layers, c.decoder.hidden, c.decoder.kv_hidden, c.decoder.intermediate) == (32, 4096, 4096, 11008)
    q2 = count_model(hf_config("Qwen/Qwen2-VL-2B-Instruct"), dtype="bfloat16", lora=LoraConfig(), image_side=224)
    assert q2.lm_head_parameters == 0 and q2.decoder.kv_hidden == 2 * 128  # tied embeddings; 2 kv heads of 128
    assert (q2.image_tokens, q2.vision_tokens) == (64, 256)  # 16 x 16 patches of 14 px, merged 2 x 2
    nxt = count_model(hf_config("llava-hf/llava-v1.6-mistral-7b-hf"), dtype="bfloat16", lora=LoraConfig(), image_side=0)
    assert nxt.image_tokens == 2928  # anyres at 672 x 672: 576 + 4 x 576 + 48 newline tokens


@pytest.mark.parametrize("arch", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl"])
def test_image_tokens_are_what_the_processor_writes(arch):
    """The plan's image tokens per picture against the family's real processor on the tiny model."""
    from PIL import Image

    from saferlhfv.data.world import text_corpus
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.generation import encode_prompts

    cfg = load_config("tiny", overrides=[f"model.tiny_arch={arch}"])
    _, processor = load_vlm(cfg.model, text_corpus(cfg.data), seed=0)
    side = cfg.model.tiny_image_size
    batch = encode_prompts(processor, [Image.new("RGB", (side, side))], ["what is this?"])
    written = int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum())
    assert model_counts(cfg).image_tokens == written


def test_activation_formula_by_hand():
    block = Block(layers=2, hidden=8, kv_hidden=4, intermediate=16, heads=2, gated_mlp=True)
    # per token: 6 h + 2 h_kv + 4 i = 48 + 8 + 64 = 120 values of 2 bytes, for 3 x 5 tokens
    assert layer_activation_bytes(block, batch=3, tokens=5, bytes_per_value=2) == 2 * 3 * 5 * 120
    assert layer_activation_bytes(block, batch=3, tokens=5, bytes_per_value=2, eager=True) == 3600 + 2 * 2 * 25 * 3
    # checkpointing: one hidden state per layer (2 x 2 x 15 x 8 = 480) plus one layer recomputed
    assert stack_activation_bytes(block, batch=3, tokens=5, bytes_per_value=2, checkpointing=True) == 480 + 3600
    assert stack_activation_bytes(block, batch=3, tokens=5, bytes_per_value=2, checkpointing=False) == 2 * 3600
    plain = Block(layers=1, hidden=8, kv_hidden=8, intermediate=32, heads=2, gated_mlp=False)
    assert layer_activation_bytes(plain, batch=1, tokens=1, bytes_per_value=4) == 4 * (48 + 16 + 64)
    assert logprob_bytes(batch=3, tokens=5, vocab=10) == 16 * 3 * 4 * 10


def test_per_gpu_bytes_and_the_verdict_by_hand():
    actor = RoleMemory(role="actor", trainable_parameters=4 * GIB, weight_bytes=8 * GIB, grad_bytes=8 * GIB,
                       adam_bytes=48 * GIB, prepared=True)  # fmt: skip
    reference = RoleMemory(role="reference", trainable_parameters=0, weight_bytes=8 * GIB, grad_bytes=0, adam_bytes=0,
                           prepared=False)  # fmt: skip
    roles = [actor, reference]
    one = per_gpu_bytes(roles, zero=0, gpus=1)
    assert one == {"weights": 16 * GIB, "grads": 8 * GIB, "adam": 48 * GIB}
    assert verdict(sum(one.values()) + 8 * GIB, 80) == {"fits": True, "headroom_gib": 0.0}  # 80 of 80: just fits
    assert verdict(sum(one.values()) + 9 * GIB, 80) == {"fits": False, "headroom_gib": -1.0}
    # ZeRO-2 on 4 GPUs: the actor's gradients and AdamW state in quarters; weights whole
    assert per_gpu_bytes(roles, zero=2, gpus=4) == {"weights": 16 * GIB, "grads": 2 * GIB, "adam": 12 * GIB}
    # ZeRO-3 also shards the actor's weights; the frozen reference is not prepared, so it stays whole
    assert per_gpu_bytes(roles, zero=3, gpus=4) == {"weights": 10 * GIB, "grads": 2 * GIB, "adam": 12 * GIB}
    assert verdict(30 * GIB, 40)["headroom_gib"] == 10.0
    with pytest.raises(ValueError, match="zero"):
        per_gpu_bytes(roles, zero=1, gpus=2)


def test_adam_conventions_and_the_shared_layout_by_hand():
    c = count_model(hf_config("Qwen/Qwen2-VL-2B-Instruct"), dtype="bfloat16", lora=LoraConfig(r=8), image_side=224)
    full = {r.role: r for r in role_memory_plan(c, lora=False, shared=False, freeze_vision_tower=True)}
    trained = c.parameters - c.vision_parameters
    assert full["actor"].trainable_parameters == trained
    assert full["actor"].adam_bytes == 12 * trained  # bf16: fp32 master + 2 fp32 moments
    torch_adam = role_memory_plan(c, lora=False, shared=False, freeze_vision_tower=True, adam="torch")
    assert torch_adam[0].adam_bytes == 4 * trained  # two bf16 moments
    # tied embeddings: the critic trains the embedding that is also the LM head
    assert full["reward critic"].trainable_parameters == trained + c.head_parameters
    shared = {r.role: r for r in role_memory_plan(c, lora=True, shared=True, freeze_vision_tower=False)}
    assert shared["reference"].weight_bytes == 2 * c.parameters + c.buffer_bytes
    assert shared["RM-V"].weight_bytes == 4 * c.adapter_parameters + 2 * c.head_parameters  # fp32 adapter, bf16 head
    # fp32 adapter: 4 (grad) + 8 (moments) bytes; bf16 head: 2 + 12
    assert shared["reward critic"].grad_bytes + shared["reward critic"].adam_bytes == (
        12 * c.adapter_parameters + 14 * c.head_parameters
    )
    assert not any(r.prepared for r in shared.values())  # no DeepSpeed in the shared layout


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


@pytest.mark.parametrize(("dtype", "freeze_vision"), [("float32", True), ("bfloat16", False)])
def test_plan_equals_the_measured_tiny_layouts(tmp_path, artifacts, monkeypatch, dtype, freeze_vision):
    """The plan's bytes against the memory bench's measurement of the real trainer, to the byte.

    ``measure_layout`` rounds its MB to 0.01 (5 KiB, more than a tiny head's 260 bytes); a ``round``
    that returns its argument, in that module only, gives the exact byte counts (MiB = bytes / 2**20, exact
    in floating point at these sizes). In bfloat16 the LoRA adapters are fp32 (peft) and plain AdamW keeps
    bf16 moments (``adam="torch"``).
    """
    overrides = [f"model.dtype={dtype}", f"ppo.freeze_vision_tower={str(freeze_vision).lower()}", "model.lora.r=4"]
    cfg = load_config("tiny", overrides=SMALL_MODEL_AND_WORLD + overrides)
    upstream = _untrained_upstream(cfg, tmp_path / "upstream", lora=True)
    counts = model_counts(cfg)
    adam = "mixed" if dtype == "float32" else "torch"
    plan = {lay["layout"]: lay for lay in plan_memory(cfg, counts=counts, adam=adam)["layouts"]}
    monkeypatch.setattr(memory, "round", lambda x, ndigits=None: x, raising=False)
    for name, overrides in PLAN_LAYOUTS:
        measured = measure_layout(apply_overrides(cfg, overrides), upstream, iterations=1)
        roles = plan[name]["roles"]
        assert sum(r["weight_bytes"] for r in roles) == measured["weights_mb"] * 2**20, name
        assert sum(r["trainable_parameters"] for r in roles) == measured["trainable_parameters"], name
        state = sum(r["grad_bytes"] + r["adam_bytes"] for r in roles)
        if not freeze_vision and "separate" in name:
            # AdamW makes state only for parameters that got a gradient: LLaVA reads the vision tower's last
            # hidden state before its post-layernorm, whose weight and bias (2 x vision width) never get one,
            # in the actor and both critics (two bf16 moments each); the plan counts them, an upper bound
            state -= 3 * 2 * cfg.model.tiny_vision_hidden_size * 2 * 2
        assert state == measured["train_state_mb"] * 2**20, name
    trained_actor = plan[PLAN_LAYOUTS[0][0]]["roles"][0]["trainable_parameters"]
    assert trained_actor == counts.parameters - (counts.vision_parameters if freeze_vision else 0)


def test_cli_prints_the_paper_verdict(capsys):
    assert main(["--plan", "paper"]) == 0
    out = capsys.readouterr().out
    assert "7,063,427,072" in out and "ZeRO-3" in out
    for name, _ in PLAN_LAYOUTS:
        assert name in out
    verdict_line = next(line for line in out.splitlines() if line.startswith("verdict:"))
    assert "shared-base layout on 1 GPU of 80 GiB" in verdict_line
    assert ("FITS" in verdict_line) != ("does NOT fit" in verdict_line)


def test_rollout_peak_is_the_largest_phase_by_hand():
    """Generation holds the KV cache and each generated token's logits; pi_old's log-probs are read off
    those logits; the reference's come from a full pass whose head runs on the answer's positions only:
    the rollout needs the largest of the three."""
    cfg = load_config("paper")
    plan = plan_memory(cfg, gpus=1, gpu_gib=80)
    counts, ppo = plan["model"], cfg.ppo
    p, V, R = 2, counts["vocab_size"], ppo.max_new_tokens  # bf16
    B = ppo.rollout_batch_size
    T = max(cfg.data.max_prompt_tokens, counts["image_tokens"]) + R
    layers, kv = counts["decoder"]["layers"], counts["decoder"]["kv_hidden"]
    kv_cache = 2 * layers * B * T * kv * p
    phases = {"generation": kv_cache + p * B * R * V, "old_logprobs": (2 * p + 16) * B * R * V,
              "ref_logprobs": 16 * B * R * V}  # fmt: skip
    for layout in plan["layouts"]:
        parts = layout["per_gpu"]["rollout_parts"]
        assert {k: parts[k] for k in phases} == phases and parts["kv_cache"] == kv_cache
        assert layout["per_gpu"]["rollout"] == max(phases.values())


def test_update_activations_the_actor_or_two_fused_critics_by_hand():
    """The micro-batch holds the larger role's graph: the actor's (stacks + answer logits) or a critic's; with
    fused critics (one update of one minibatch) both critics' graphs are held at once."""
    base = load_config("tiny")
    cases = ((8, 1, False), (16, 1, True), (16, 2, False))  # minibatch, epochs, fused (rollout batch 16)
    for batch, epochs, fused in cases:
        overrides = [f"ppo.batch_size={batch}", "ppo.rollout_batch_size=16", f"ppo.ppo_epochs={epochs}"]
        cfg = load_config("tiny", overrides=overrides)
        for layout in plan_memory(cfg)["layouts"]:
            parts = layout["per_gpu"]["activation_parts"]
            B, R, V = cfg.ppo.batch_size, cfg.ppo.max_new_tokens, plan_memory(base)["model"]["vocab_size"]
            assert parts["logits"] == 16 * B * R * V
            critic = parts["decoder"] + parts["vision"]
            want = max(critic + parts["logits"], 2 * critic if fused else critic)
            assert layout["per_gpu"]["activations"] == want, (overrides, layout["layout"])
    # on the tiny model two critics' stacks outweigh the actor's stack and its small-vocabulary logits
    fused = plan_memory(load_config("tiny", overrides=["ppo.batch_size=16", "ppo.ppo_epochs=1"]))
    parts = fused["layouts"][0]["per_gpu"]["activation_parts"]
    assert fused["layouts"][0]["per_gpu"]["activations"] == 2 * (parts["decoder"] + parts["vision"])
