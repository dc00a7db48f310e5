r"""A memory plan for PPO's six roles from the model config alone: ``python -m saferlhfv.bench --plan paper``.

No weights are read and nothing is downloaded. The model's transformers class is instantiated from its
config on the meta device (:func:`count_model`), so every parameter count is exact; the configs of the
checkpoints the presets name are kept in :data:`CHECKPOINTS` (published ``config.json`` values), and the
tiny family is built from the preset's ``model.tiny_*`` fields.

For each layout of :data:`PLAN_LAYOUTS` (the trainer's three ways to hold the six roles, as in
:mod:`saferlhfv.train.ppo.roles` / :mod:`saferlhfv.models.shared`) and each role (actor, reference,
RM-V, CM-V, reward critic, cost critic), the plan gives bytes of weights, gradients and AdamW state,
then per layout the activations of one PPO training micro-batch and the rollout's peak, and the total
per GPU against ``--gpu-gb`` (GiB, 2**30 bytes).

What each layout holds (``P`` parameters of the VLM, ``V`` the VLM's bytes with its buffers, ``A`` one
LoRA adapter of rank ``model.lora.r`` on the decoder's projections, ``h + 1`` a scalar head):

===================  =================================  =================================================
role                 six separate models                six models, LoRA / shared base + 5 adapters
===================  =================================  =================================================
actor                V, trains P (minus the vision      V + A / A; trains A
                     tower if frozen, see below)
reference            V, frozen                          V, frozen / the shared base V (adapters off)
RM-V, CM-V           V + head, frozen                   V + head (merged) / A + head, frozen
reward, cost critic  V + head; trains P minus the       V + A + head / A + head; trains A + head
                     untied LM head (ScoreModel freezes
                     it) and the frozen vision tower
===================  =================================  =================================================

Conventions (printed with every plan):

* **Weights** in ``model.dtype``; LoRA adapters in float32 whatever the base's dtype (peft's
  ``autocast_adapter_dtype`` casts bf16 / fp16 adapters up); buffers (rotary frequencies, position ids)
  at their own dtype. Gradients: one per trainable parameter, in its dtype; every trained role's
  gradients are counted, as the memory bench counts them (the trainer frees each role's gradients after
  its step, so this is an upper bound by up to two roles' gradients).
* **AdamW state** (``adam="mixed"``, the default): 12 bytes per trainable bf16 / fp16 parameter (an fp32
  master copy plus two fp32 moments, as DeepSpeed and mixed-precision training keep), 8 bytes per fp32
  one (two fp32 moments). ``adam="torch"``: what plain ``torch.optim.AdamW`` holds, two moments in the
  parameter's dtype (what the trainer runs without DeepSpeed; identical for fp32 parameters).
* **ZeRO** (``--zero``; default from the preset's launch config, :data:`LAUNCH_ZERO`: paper 3): stage 2
  divides the gradients and AdamW state of the roles ``accelerate`` prepares (the trained ones) by the
  number of GPUs, stage 3 their weights too. The frozen roles are moved whole to every GPU by
  ``roles.py`` (``_frozen(...).to(device)``), so ZeRO does not shard them. The shared base refuses
  DeepSpeed: with it every GPU holds everything.
* **Activations of one training micro-batch**: ``B = min(ppo.batch_size, rollout answers per GPU)``
  sequences of ``T = data.max_prompt_tokens + ppo.max_new_tokens`` tokens (the prompt budget holds the
  picture's image tokens; when a picture alone needs more, the prompt is taken as its image tokens). Per
  decoder layer, the tensors autograd keeps, after the per-layer accounting of Korthikanti et al. 2022
  ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1: ``34 s b h + 5 a s^2 b``
  bytes per GPT layer in 16-bit) redone for a Llama / Qwen2 block (SwiGLU MLP, grouped-query attention,
  RMSNorm, no dropout)::

      layer = p * B * T * (6 h + 2 h_kv + 4 i)        [+ p * a * T^2 * B with eager attention]

  (``p`` bytes per activation = the weights' element size; ``6 h``: both norms' inputs and outputs, q and
  the attention output; ``2 h_kv``: k and v; ``4 i``: gate, up, SiLU(gate) and their product; SDPA /
  flash attention keep no ``T x T`` scores). A plain-MLP vision block keeps ``2 i`` instead of ``4 i``.
  With ``model.gradient_checkpointing``: ``L * p * B * T * h`` (one hidden state per layer) plus one
  layer recomputed; without: ``L * layer``. The vision tower adds its own stack (tokens through the tower
  per picture) only for a role that trains it (full fine-tuning, tower not frozen: PPO freezes it with
  ``model.freeze_vision_tower`` or ``ppo.freeze_vision_tower``, ``roles.py``).
  The actor adds its logits: :func:`~saferlhfv.models.generation.token_logprobs` holds four fp32
  ``[B, R, vocab]`` tensors at once over the answer's ``R = ppo.max_new_tokens`` positions (the fp32
  logits, log-softmax, its exp and the entropy's product; the head skips the prompt):
  ``16 * B * R * vocab`` bytes. The critics' scalar heads add nothing that counts. The roles train one
  after the other (each backward frees its graph), so the micro-batch needs the largest role's
  activations, not their sum; except with fused critics (``ppo_epochs = 1``, one minibatch:
  ``PPOTrainer.fused_critics``), whose two graphs are built before either backward: then the larger of
  the actor's and twice a critic's.
* **Rollout** (not at the same time as the micro-batch): ``ppo.rollout_batch_size / GPUs`` answers are
  generated at once with the KV cache, ``2 * L * B_r * T * h_kv * p`` bytes, keeping the raw logits of
  each of the ``R = ppo.max_new_tokens`` generated tokens (``p * B_r * R * vocab``: pi_old's log-probs
  are read off them); then pi_old's log-probs (those logits, their stacked copy and the four fp32
  tensors above: ``(2 p + 16) * B_r * R * vocab``), then the reference's (``16 * B_r * R * vocab``: its
  head, like the actor's, runs on the answer's positions only),
  each phase freeing the last's tensors: the rollout needs the largest of the three.
* **Total per GPU** = weights + gradients + AdamW state + max(micro-batch activations, rollout). Not
  counted: the CUDA context and allocator fragmentation (1-3 GiB in practice), DeepSpeed's buckets,
  ZeRO-3's gathered layers, the processor's tensors.

Checked against measurement: ``tests/test_plan.py`` builds the tiny PPO roles in each layout as the
memory bench does (:func:`saferlhfv.bench.memory.measure_layout`), in float32 and in bfloat16 (fp32
adapters, ``adam="torch"``), and finds the plan's weight bytes equal to the measured distinct weight
storage and its gradient + AdamW bytes equal to the measured train state, to the byte. One known gap:
AdamW makes state only for parameters that receive a gradient, and a trained vision tower has some that
never do (LLaVA reads a hidden state before the tower's post-layernorm; LLaVA-1.5 even skips its last
layer), so for full fine-tuning of the vision tower the plan's AdamW bytes are an upper bound (tiny: 3 x
128 parameters too many; the test checks that difference too).

The same arithmetic reproduces the bench's 25 M configuration (README, "Less memory for PPO": ``--set
model.tiny_hidden_size=512 --set model.tiny_layers=8 --set model.tiny_intermediate_size=1376 --set
model.tiny_heads=8``, LoRA r = 16): ``python -m saferlhfv.bench --plan tiny`` with those overrides gives
612.6 / 626.9 / 125.9 MiB of weights and 906.9 / 42.9 / 42.9 MiB of gradients + AdamW state, the measured
values to their 0.1 MiB, and 79,247,618 / 3,748,866 trained parameters, exactly (that configuration takes
minutes to measure and is not in the tests).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from saferlhfv.bench.memory import MEMORY_LAYOUTS
from saferlhfv.config import Config, LoraConfig, apply_overrides, load_config

__all__ = [
    "CHECKPOINTS",
    "LAUNCH_ZERO",
    "PLAN_LAYOUTS",
    "Block",
    "ModelCounts",
    "RoleMemory",
    "hf_config",
    "count_model",
    "model_counts",
    "role_memory_plan",
    "layer_activation_bytes",
    "stack_activation_bytes",
    "logprob_bytes",
    "per_gpu_bytes",
    "verdict",
    "plan_memory",
    "format_plan",
    "add_plan_arguments",
    "plan_command",
]

GIB = 2**30
MIB = 2**20

#: the trainer's three layouts of the six roles (the memory bench's first three, same names and overrides).
PLAN_LAYOUTS: tuple[tuple[str, dict[str, Any]], ...] = MEMORY_LAYOUTS[:3]

#: DeepSpeed ZeRO stage of each preset's launch config (the paper preset launches with zero3.yaml; small
#: runs on one GPU with ddp.yaml; tiny on CPUs).
LAUNCH_ZERO = {"paper": 3, "small": 0, "tiny": 0}

_CLIP_L_336 = {
    # openai/clip-vit-large-patch14-336, the vision tower of LLaVA-1.5 and LLaVA-1.6 (their config.json)
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
_QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
                    "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
_QWEN_7B_TEXT = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}  # fmt: skip

#: published ``config.json`` values (the fields that size the model) of the checkpoints the presets and
#: :data:`saferlhfv.models.factory.REAL_FAMILIES` name; the hub cannot be reached, so they live here.
#: Checked: instantiated on the meta device they give 7.06 B (LLaVA-1.5-7B), 7.57 B (LLaVA-1.6-Mistral-7B),
#: 2.21 B (Qwen2-VL-2B), 8.29 B (Qwen2-VL-7B and Qwen2.5-VL-7B) parameters, the published sizes.
CHECKPOINTS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/llava-hf/llava-1.5-7b-hf/blob/main/config.json (Vicuna-7B + CLIP ViT-L/14-336)
    "llava-hf/llava-1.5-7b-hf": {
        "model_type": "llava",
        "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "max_position_embeddings": 4096},  # fmt: skip
        "vision_config": _CLIP_L_336,
        "image_token_index": 32000,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_seq_length": 576,
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/llava-hf/llava-v1.6-mistral-7b-hf/blob/main/config.json (Mistral-7B, anyres)
    "llava-hf/llava-v1.6-mistral-7b-hf": {
        "model_type": "llava_next",
        "text_config": {"model_type": "mistral", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "max_position_embeddings": 32768},  # fmt: skip
        "vision_config": _CLIP_L_336,
        "image_token_index": 32000,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json (tied embeddings)
    "Qwen/Qwen2-VL-2B-Instruct": {
        "model_type": "qwen2_vl",
        "text_config": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                        "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},  # fmt: skip
        "vision_config": {**_QWEN2_VL_VISION, "hidden_size": 1536},
        "tie_word_embeddings": True,
    },
    # https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json
    "Qwen/Qwen2-VL-7B-Instruct": {
        "model_type": "qwen2_vl",
        "text_config": _QWEN_7B_TEXT,
        "vision_config": {**_QWEN2_VL_VISION, "hidden_size": 3584},
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json (SwiGLU vision MLP, window attention)
    "Qwen/Qwen2.5-VL-7B-Instruct": {
        "model_type": "qwen2_5_vl",
        "text_config": _QWEN_7B_TEXT,
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "out_hidden_size": 3584,
                          "num_heads": 16, "hidden_act": "silu", "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
        "tie_word_embeddings": False,
    },
}  # fmt: skip


def hf_config(name: str):
    """The transformers config of a checkpoint of :data:`CHECKPOINTS` (no network)."""
    from transformers import AutoConfig

    if name not in CHECKPOINTS:
        raise KeyError(f"no published config of {name!r} in saferlhfv.bench.plan.CHECKPOINTS: {list(CHECKPOINTS)}")
    values = dict(CHECKPOINTS[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)


# --------------------------------------------------------------------------- counting on the meta device


@dataclass(frozen=True)
class Block:
    """The shape of a stack of transformer blocks, what the activation estimate reads.

    Attributes:
        layers: number of blocks ``L``.
        hidden: width ``h``.
        kv_hidden: width of k (and of v), ``h_kv = kv heads * head dim`` (``h`` without grouped-query attention).
        intermediate: MLP width ``i``.
        heads: attention heads ``a``.
        gated_mlp: SwiGLU (gate, up, down: 4 stored tensors of width ``i``) or a plain MLP (2).
    """

    layers: int
    hidden: int
    kv_hidden: int
    intermediate: int
    heads: int
    gated_mlp: bool


@dataclass(frozen=True)
class ModelCounts:
    """Exact sizes of one VLM, from its class instantiated on the meta device.

    Attributes:
        name: checkpoint or tiny description.
        model_type: transformers model type (``llava``, ``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``).
        dtype: weight dtype name.
        parameters: distinct parameters (tied embeddings once).
        vision_parameters: parameters of the vision tower (``factory.vision_tower``; Qwen's includes the merger).
        lm_head_parameters: parameters of an untied LM head (0 when tied to the input embeddings).
        buffer_bytes: bytes of the model's buffers (rotary frequencies, position ids) at their dtypes.
        adapter_parameters: one LoRA adapter of rank ``lora.r`` on the decoder's ``lora.target_modules``.
        head_parameters: one scalar head, ``hidden + 1``.
        decoder, vision: the two block stacks.
        vocab_size: LM head rows.
        image_side: side in pixels of the pictures counted (sets Qwen's dynamic image tokens).
        image_tokens: decoder tokens one picture takes.
        vision_tokens: tokens one picture sends through the vision tower (CLS and every crop included).
    """

    name: str
    model_type: str
    dtype: str
    parameters: int
    vision_parameters: int
    lm_head_parameters: int
    buffer_bytes: int
    adapter_parameters: int
    head_parameters: int
    decoder: Block
    vision: Block
    vocab_size: int
    image_side: int
    image_tokens: int
    vision_tokens: int


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}") from None


def _image_tokens(config, image_side: int) -> tuple[int, int]:
    """``(decoder tokens, vision-tower tokens)`` of one picture of ``image_side`` pixels (square)."""
    vc = config.vision_config
    if config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        unit = vc.patch_size * vc.spatial_merge_size  # Qwen's processor resizes to a multiple of patch * merge
        side = max(unit, round(image_side / unit) * unit)
        patches = (side // vc.patch_size) ** 2
        return patches // vc.spatial_merge_size**2, patches
    n = vc.image_size // vc.patch_size
    base = n * n + (1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0)
    if config.model_type == "llava_next":  # anyres: the base view + the tiles of the best grid + one newline per row
        best = max(
            ((h // vc.image_size) * (w // vc.image_size), base + (h // vc.image_size) * (w // vc.image_size) * n * n
             + (h // vc.image_size) * n)
            for h, w in config.image_grid_pinpoints
        )  # fmt: skip
        return best[1], (1 + best[0]) * (n * n + 1)
    return base, n * n + 1


def _vision_block(tower: torch.nn.Module, vc) -> Block:
    width = getattr(vc, "embed_dim", None) or vc.hidden_size
    intermediate = getattr(vc, "intermediate_size", None) or int(width * vc.mlp_ratio)
    heads = getattr(vc, "num_heads", None) or vc.num_attention_heads
    layers = getattr(vc, "depth", None) or vc.num_hidden_layers
    gated = any(name.endswith("gate_proj") for name, _ in tower.named_modules())
    return Block(layers=layers, hidden=width, kv_hidden=width, intermediate=intermediate, heads=heads, gated_mlp=gated)


def count_model(config, *, dtype: str, lora: LoraConfig, image_side: int, name: str = "") -> ModelCounts:
    """Instantiate ``config``'s ``*ForConditionalGeneration`` on the meta device (no memory, no weights) and count.

    Args:
        config: a transformers VLM config (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL).
        dtype: weight dtype name (``model.dtype``); buffers are created as ``from_pretrained`` creates them.
        lora: rank and target modules of one adapter (counted as :func:`~saferlhfv.models.factory.apply_lora`
            places it: decoder projections only).
        image_side: side in pixels of the pictures (sets Qwen's dynamic image tokens).
        name: what to call the model in the plan.

    Returns:
        :class:`ModelCounts`.
    """
    from transformers import AutoModelForImageTextToText

    from saferlhfv.models.factory import vision_tower

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=_dtype(dtype))
    unique = {id(p): p for p in model.parameters()}
    buffers = {id(b): b for b in model.buffers()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    tower = vision_tower(model)
    pattern = rf".*language_model.*\.({'|'.join(lora.target_modules)})"  # apply_lora's regex, fullmatch as peft does
    adapter = sum(
        lora.r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)
    )
    tc = config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    decoder = Block(layers=tc.num_hidden_layers, hidden=tc.hidden_size,
                    kv_hidden=tc.num_key_value_heads * head_dim, intermediate=tc.intermediate_size,
                    heads=tc.num_attention_heads, gated_mlp=True)  # fmt: skip
    image_tokens, vision_tokens = _image_tokens(config, image_side)
    return ModelCounts(
        name=name or config.model_type,
        model_type=config.model_type,
        dtype=dtype,
        parameters=sum(p.numel() for p in unique.values()),
        vision_parameters=sum(p.numel() for p in {id(p): p for p in tower.parameters()}.values()),
        lm_head_parameters=0 if tied or head is None else head.weight.numel(),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers.values()),
        adapter_parameters=adapter,
        head_parameters=tc.hidden_size + 1,
        decoder=decoder,
        vision=_vision_block(tower, config.vision_config),
        vocab_size=tc.vocab_size,
        image_side=image_side,
        image_tokens=image_tokens,
        vision_tokens=vision_tokens,
    )


def model_counts(cfg: Config) -> ModelCounts:
    """:class:`ModelCounts` of the model ``cfg.model`` names.

    A real family reads its checkpoint's config from :data:`CHECKPOINTS` (or ``config.json`` of a local
    folder in ``model.name_or_path``). The tiny family builds the model once as the stages do (tokenizer
    trained on the mini world's corpus, so the vocabulary is the real one; about a second) and counts its
    config on the meta device like any other.
    """
    from pathlib import Path

    m = cfg.model
    if m.family == "tiny":
        from saferlhfv.data.world import text_corpus
        from saferlhfv.models.factory import load_vlm

        plain = apply_overrides(cfg, {"model.lora.enabled": False, "model.gradient_checkpointing": False})
        model, _ = load_vlm(plain.model, text_corpus(cfg.data), seed=cfg.seed)
        arch = getattr(m, "tiny_arch", "llava")
        config, side, name = model.config, m.tiny_image_size, f"tiny {arch} (model.tiny_*)"
    else:
        from saferlhfv.models.factory import REAL_FAMILIES

        name = m.name_or_path or REAL_FAMILIES[m.family]
        if name in CHECKPOINTS:
            config = hf_config(name)
        elif (Path(name) / "config.json").is_file():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(name, trust_remote_code=False)
        else:
            raise KeyError(
                f"no config for {name!r}: add its published config.json values to saferlhfv.bench.plan.CHECKPOINTS "
                f"(known: {list(CHECKPOINTS)}) or point model.name_or_path at a local folder"
            )
        side = cfg.data.image_size
    return count_model(config, dtype=m.dtype, lora=m.lora, image_side=side, name=name)


# --------------------------------------------------------------------------- bytes per role


@dataclass(frozen=True)
class RoleMemory:
    """One role's memory in one layout, bytes for the whole role (before any ZeRO sharding).

    Attributes:
        role: actor, reference, RM-V, CM-V, reward critic, cost critic.
        trainable_parameters: parameters its optimiser updates.
        weight_bytes: weights it alone holds (the shared base is the reference's row).
        grad_bytes: one gradient per trainable parameter, in the parameter's dtype.
        adam_bytes: AdamW state of its trainable parameters (module docstring's convention).
        prepared: ``accelerate`` prepares it (it trains): ZeRO shards it.
    """

    role: str
    trainable_parameters: int
    weight_bytes: int
    grad_bytes: int
    adam_bytes: int
    prepared: bool


ROLE_NAMES = ("actor", "reference", "RM-V", "CM-V", "reward critic", "cost critic")


def _adam_bytes_per_parameter(element_size: int, adam: str) -> int:
    if adam == "torch":
        return 2 * element_size
    if adam != "mixed":
        raise ValueError(f"adam must be 'mixed' or 'torch', got {adam!r}")
    return 8 if element_size == 4 else 12


def role_memory_plan(
    counts: ModelCounts, *, lora: bool, shared: bool, freeze_vision_tower: bool, adam: str = "mixed"
) -> list[RoleMemory]:
    """The six roles' :class:`RoleMemory` in one layout (module docstring's table).

    Args:
        counts: the model's sizes.
        lora: the actor and critics train LoRA adapters (``model.lora.enabled``).
        shared: one base carrying five adapters (``ppo.shared_base``; needs ``lora``).
        freeze_vision_tower: ``model.freeze_vision_tower or ppo.freeze_vision_tower``, as PPO reads them
            (matters for full fine-tuning only).
        adam: ``"mixed"`` (fp32 master + moments) or ``"torch"`` (moments in the parameter's dtype).
    """
    if shared and not lora:
        raise ValueError("the shared base needs LoRA adapters (model.lora.enabled)")
    w = _dtype(counts.dtype).itemsize
    vlm = counts.parameters * w + counts.buffer_bytes
    head = counts.head_parameters * w
    adapter = counts.adapter_parameters * 4  # peft keeps adapters in fp32 (autocast_adapter_dtype)

    adam_w, adam_32 = _adam_bytes_per_parameter(w, adam), _adam_bytes_per_parameter(4, adam)

    def role(name: str, weights: int, base_trained: int = 0, fp32_trained: int = 0) -> RoleMemory:
        return RoleMemory(
            role=name,
            trainable_parameters=base_trained + fp32_trained,
            weight_bytes=weights,
            grad_bytes=base_trained * w + fp32_trained * 4,
            adam_bytes=base_trained * adam_w + fp32_trained * adam_32,
            prepared=base_trained + fp32_trained > 0 and not shared,
        )

    vision = counts.vision_parameters if freeze_vision_tower else 0
    h1 = counts.head_parameters
    if not lora:
        critic = counts.parameters - counts.lm_head_parameters - vision + h1
        return [role("actor", vlm, counts.parameters - vision), role("reference", vlm), role("RM-V", vlm + head),
                role("CM-V", vlm + head), role("reward critic", vlm + head, critic),
                role("cost critic", vlm + head, critic)]  # fmt: skip
    a = counts.adapter_parameters
    if not shared:
        return [role("actor", vlm + adapter, 0, a), role("reference", vlm), role("RM-V", vlm + head),
                role("CM-V", vlm + head), role("reward critic", vlm + adapter + head, h1, a),
                role("cost critic", vlm + adapter + head, h1, a)]  # fmt: skip
    return [role("actor", adapter, 0, a), role("reference", vlm), role("RM-V", adapter + head),
            role("CM-V", adapter + head), role("reward critic", adapter + head, h1, a),
            role("cost critic", adapter + head, h1, a)]  # fmt: skip


# --------------------------------------------------------------------------- activations


def layer_activation_bytes(block: Block, *, batch: int, tokens: int, bytes_per_value: int, eager: bool = False) -> int:
    """Bytes autograd keeps for one block's backward: ``p * B * T * (6 h + 2 h_kv + m i)`` (``m`` 4 gated, 2 plain).

    Args:
        block: the stack's shape.
        batch: sequences (or pictures) ``B``.
        tokens: tokens per sequence ``T``.
        bytes_per_value: ``p``, bytes per activation element (2 bf16 / fp16, 4 fp32).
        eager: eager attention also keeps the ``[B, a, T, T]`` softmax (``+ p * a * T^2 * B``).
    """
    per_token = 6 * block.hidden + 2 * block.kv_hidden + (4 if block.gated_mlp else 2) * block.intermediate
    out = bytes_per_value * batch * tokens * per_token
    if eager:
        out += bytes_per_value * block.heads * tokens * tokens * batch
    return out


def stack_activation_bytes(
    block: Block, *, batch: int, tokens: int, bytes_per_value: int, checkpointing: bool, eager: bool = False
) -> int:
    """A stack's activations: ``L * p * B * T * h + layer`` with gradient checkpointing, ``L * layer`` without."""
    layer = layer_activation_bytes(block, batch=batch, tokens=tokens, bytes_per_value=bytes_per_value, eager=eager)
    if checkpointing:
        return block.layers * bytes_per_value * batch * tokens * block.hidden + layer
    return block.layers * layer


def logprob_bytes(*, batch: int, tokens: int, vocab: int) -> int:
    """``16 * B * (T - 1) * vocab``: four fp32 ``[B, T - 1, vocab]`` tensors of ``token_logprobs`` at once."""
    return 16 * batch * (tokens - 1) * vocab


# --------------------------------------------------------------------------- per GPU and the verdict


def per_gpu_bytes(roles: list[RoleMemory], *, zero: int, gpus: int) -> dict[str, float]:
    """Weights, gradients and AdamW state one GPU holds: ZeRO >= 2 divides the prepared roles' gradients and
    AdamW state by ``gpus``, ZeRO 3 their weights too; frozen roles stay whole.

    Returns:
        ``{"weights": bytes, "grads": bytes, "adam": bytes}`` (floats: a shard is a fraction).
    """
    if zero not in (0, 2, 3):
        raise ValueError(f"zero must be 0, 2 or 3, got {zero}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    state = gpus if zero >= 2 else 1
    weights = gpus if zero == 3 else 1
    return {
        "weights": sum(r.weight_bytes / (weights if r.prepared else 1) for r in roles),
        "grads": sum(r.grad_bytes / (state if r.prepared else 1) for r in roles),
        "adam": sum(r.adam_bytes / (state if r.prepared else 1) for r in roles),
    }


def verdict(total_bytes: float, gpu_gib: float) -> dict[str, Any]:
    """``{"fits": total <= GPU, "headroom_gib": GPU - total}`` (negative headroom: that much over)."""
    headroom = gpu_gib - total_bytes / GIB
    return {"fits": headroom >= 0, "headroom_gib": round(headroom, 2)}


# --------------------------------------------------------------------------- the plan


def plan_memory(
    cfg: Config,
    *,
    gpus: int = 1,
    gpu_gib: float = 80.0,
    zero: int | None = None,
    adam: str = "mixed",
    counts: ModelCounts | None = None,
) -> dict[str, Any]:
    """The memory plan of ``cfg``'s PPO in each of :data:`PLAN_LAYOUTS` (module docstring), as plain data.

    Args:
        cfg: the run's config (``model``, ``data.max_prompt_tokens``, ``ppo.batch_size``,
            ``ppo.rollout_batch_size``, ``ppo.max_new_tokens``, ``model`` / ``ppo.freeze_vision_tower``).
        gpus: data-parallel processes, one per GPU.
        gpu_gib: memory of one GPU, GiB.
        zero: DeepSpeed ZeRO stage 0, 2 or 3 (None: :data:`LAUNCH_ZERO` of ``cfg.preset``, else 0).
        adam: AdamW convention, ``"mixed"`` or ``"torch"`` (module docstring).
        counts: the model's sizes (default: :func:`model_counts` of ``cfg``).

    Returns:
        ``model`` (the fields of :class:`ModelCounts`), ``settings`` (batch, tokens, GPUs, ZeRO, conventions)
        and ``layouts``: per layout its ``roles`` (:class:`RoleMemory` fields), ``per_gpu`` bytes (weights,
        grads, adam, activations with their parts, rollout with its parts, total) and ``verdict``.
    """
    from saferlhfv.train.ppo.trainer import critics_fuse

    zero = LAUNCH_ZERO.get(cfg.preset, 0) if zero is None else zero
    counts = counts or model_counts(cfg)
    m, ppo = cfg.model, cfg.ppo
    p = _dtype(m.dtype).itemsize
    rollout = max(1, ppo.rollout_batch_size // gpus)
    batch = min(ppo.batch_size, rollout)
    prompt = max(cfg.data.max_prompt_tokens, counts.image_tokens)
    tokens = prompt + ppo.max_new_tokens
    eager = m.attn_implementation == "eager"
    frozen_tower = m.freeze_vision_tower or ppo.freeze_vision_tower  # roles.py: prepare_for_training

    decoder = stack_activation_bytes(counts.decoder, batch=batch, tokens=tokens, bytes_per_value=p,
                                     checkpointing=m.gradient_checkpointing, eager=eager)  # fmt: skip
    vision_acts = stack_activation_bytes(counts.vision, batch=batch, tokens=counts.vision_tokens, bytes_per_value=p,
                                         checkpointing=m.gradient_checkpointing, eager=eager)  # fmt: skip
    # token_logprobs(start=P - 1): the head and softmax on the answer's positions only
    logits = logprob_bytes(batch=batch, tokens=ppo.max_new_tokens + 1, vocab=counts.vocab_size)
    fused_critics = critics_fuse(ppo, rollout)  # PPOTrainer.fused_critics
    kv_cache = 2 * counts.decoder.layers * rollout * tokens * counts.decoder.kv_hidden * p
    generated_logits = p * rollout * ppo.max_new_tokens * counts.vocab_size
    # the generated logits, their stacked copy, and logprob_bytes' four fp32 tensors over the R answer positions
    old_logprobs = 2 * generated_logits + logprob_bytes(
        batch=rollout, tokens=ppo.max_new_tokens + 1, vocab=counts.vocab_size
    )
    rollout_logprobs = logprob_bytes(batch=rollout, tokens=ppo.max_new_tokens + 1, vocab=counts.vocab_size)
    rollout_phases = {
        "generation": kv_cache + generated_logits,
        "old_logprobs": old_logprobs,
        "ref_logprobs": rollout_logprobs,
    }
    layouts = []
    for name, overrides in PLAN_LAYOUTS:
        lora, shared = overrides["model.lora.enabled"], overrides["ppo.shared_base"]
        roles = role_memory_plan(counts, lora=lora, shared=shared, freeze_vision_tower=frozen_tower,
                                 adam=adam)  # fmt: skip
        trains_vision = not lora and not frozen_tower
        parts = {"decoder": decoder, "vision": vision_acts if trains_vision else 0, "logits": logits}
        layout_zero = 0 if shared else zero
        held = per_gpu_bytes(roles, zero=layout_zero, gpus=gpus)
        critic = parts["decoder"] + parts["vision"]  # a critic keeps the actor's stacks without the logits
        activations = max(sum(parts.values()), 2 * critic if fused_critics else critic)
        rollout_peak = max(rollout_phases.values())
        total = held["weights"] + held["grads"] + held["adam"] + max(activations, rollout_peak)
        layouts.append({
            "layout": name,
            "zero": layout_zero,
            "roles": [asdict(r) for r in roles],
            "per_gpu": {**{k: round(v) for k, v in held.items()}, "activations": activations,
                        "activation_parts": parts, "rollout": rollout_peak,
                        "rollout_parts": {"kv_cache": kv_cache, "generated_logits": generated_logits, **rollout_phases},
                        "total": round(total)},
            "verdict": verdict(total, gpu_gib),
        })  # fmt: skip
    return {
        "preset": cfg.preset,
        "model": asdict(counts),
        "settings": {
            "gpus": gpus,
            "gpu_gib": gpu_gib,
            "zero": zero,
            "adam": adam,
            "micro_batch": batch,
            "rollout_per_gpu": rollout,
            "tokens": tokens,
            "prompt_tokens": prompt,
            "max_new_tokens": ppo.max_new_tokens,
            "gradient_checkpointing": m.gradient_checkpointing,
            "attention": "eager" if eager else (m.attn_implementation or "sdpa"),
            "freeze_vision_tower": frozen_tower,
            "lora_r": m.lora.r,
            "lora_targets": len(m.lora.target_modules),
        },
        "layouts": layouts,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _count(n: float) -> str:
    """``7.06 B`` / ``1.19 M`` parameters."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_plan(plan: dict[str, Any]) -> str:
    """The text ``python -m saferlhfv.bench --plan PRESET`` prints: conventions, one table per layout, the verdict."""
    mo, s = plan["model"], plan["settings"]
    big = max(lay["per_gpu"]["total"] for lay in plan["layouts"]) >= GIB
    unit, div = ("GiB", GIB) if big else ("MiB", MIB)
    wname = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[mo["dtype"]]
    adam = ("fp32 master + 2 fp32 moments = 12 B per trained bf16/fp16 parameter, 8 B per fp32 one"
            if s["adam"] == "mixed" else "2 moments in the parameter's dtype (plain torch.optim.AdamW)")  # fmt: skip
    zero = {0: "no ZeRO", 2: "ZeRO-2: the trained roles' gradients and AdamW state sharded",
            3: "ZeRO-3: the trained roles' weights, gradients and AdamW state sharded"}[s["zero"]]  # fmt: skip
    gpus = f"{_plural(s['gpus'], 'GPU')} of {s['gpu_gib']:g} GiB"
    qwen = f" of a {mo['image_side']} px picture" if mo["model_type"].startswith("qwen") else ""
    lines = [
        f"memory plan: preset {plan['preset']}, {mo['name']} ({mo['model_type']}), counted on the meta device from "
        "its config (no weights)",
        f"  parameters {mo['parameters']:,} (vision tower {mo['vision_parameters']:,}, untied LM head "
        f"{mo['lm_head_parameters']:,}); LoRA adapter (r {s['lora_r']}, {s['lora_targets']} projections) "
        f"{mo['adapter_parameters']:,}; scalar head {mo['head_parameters']:,}",
        f"  bytes: weights {wname} ({_dtype(mo['dtype']).itemsize} B), LoRA adapters fp32 (peft), gradients in the "
        f"parameter's dtype; AdamW: {adam}",
        f"  micro-batch: {_plural(s['micro_batch'], 'sequence')} x {s['tokens']:,} tokens ({s['prompt_tokens']:,} "
        f"prompt incl. {mo['image_tokens']:,} image tokens{qwen} + {s['max_new_tokens']:,} answer), gradient "
        f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, {s['attention']} attention; rollout: "
        f"{_plural(s['rollout_per_gpu'], 'answer')} per GPU at once",
        f"  {gpus}, {zero}; frozen roles whole on every GPU",
    ]
    for lay in plan["layouts"]:
        g, v = lay["per_gpu"], lay["verdict"]
        how = f"ZeRO-{lay['zero']}" if lay["zero"] else ("no DeepSpeed" if "shared" in lay["layout"] else "no ZeRO")
        lines += ["", f"{lay['layout'] + ' (' + how + ')':<46} {'trained params':>15} {'weights':>9} {'grads':>9} "
                      f"{'AdamW':>9}  {unit}"]  # fmt: skip
        for r in lay["roles"]:
            trained = f"{r['trainable_parameters']:,}" if r["trainable_parameters"] else "-"
            grads = f"{r['grad_bytes'] / div:9.2f}" if r["grad_bytes"] else f"{'-':>9}"
            adam_b = f"{r['adam_bytes'] / div:9.2f}" if r["adam_bytes"] else f"{'-':>9}"
            name = r["role"] + (" (the shared base)" if "shared" in lay["layout"] and r["role"] == "reference" else "")
            lines.append(f"  {name:<44} {trained:>15} {r['weight_bytes'] / div:9.2f} {grads} {adam_b}")
        parts, ro = g["activation_parts"], g["rollout_parts"]
        lines += [
            f"  {'held per GPU':<44} {'':>15} {g['weights'] / div:9.2f} {g['grads'] / div:9.2f} {g['adam'] / div:9.2f}",
            f"  {'activations of one micro-batch':<44} {g['activations'] / div:15.2f}   decoder "
            f"{parts['decoder'] / div:.2f} + vision {parts['vision'] / div:.2f} + logits {parts['logits'] / div:.2f}",
            f"  {'rollout peak':<44} {g['rollout'] / div:15.2f}   the largest of generation "
            f"{ro['generation'] / div:.2f} (KV cache {ro['kv_cache'] / div:.2f} + logits "
            f"{ro['generated_logits'] / div:.2f}), pi_old's log-probs {ro['old_logprobs'] / div:.2f}, "
            f"the reference's {ro['ref_logprobs'] / div:.2f}",
            f"  = held + max(activations, rollout) = {g['total'] / div:.2f} {unit} per GPU: "
            + (f"fits {gpus}, {v['headroom_gib']:.1f} GiB headroom" if v["fits"]
               else f"does NOT fit {gpus}, {-v['headroom_gib']:.1f} GiB over"),
        ]  # fmt: skip
    shared = next(lay for lay in plan["layouts"] if "shared" in lay["layout"])
    v = shared["verdict"]
    lines += [
        "",
        f"verdict: preset {plan['preset']} ({mo['name']}, {_count(mo['parameters'])} parameters) in the shared-base "
        f"layout on {gpus}: " + (f"FITS, {v['headroom_gib']:.1f} GiB headroom" if v["fits"]
                                 else f"does NOT fit, {-v['headroom_gib']:.1f} GiB over"),
    ]  # fmt: skip
    notes = []
    if s["zero"]:
        notes.append(
            "accelerate prepares one model per DeepSpeed Accelerator and SeparateRoles prepares three (actor, two "
            "critics): the ZeRO rows are what ZeRO gives once each trained role has its own engine"
        )
    if not s["freeze_vision_tower"]:
        notes.append(
            "model.freeze_vision_tower and ppo.freeze_vision_tower are off: full fine-tuning trains the vision tower"
        )
    notes.append("not counted: CUDA context and allocator fragmentation (1-3 GiB), DeepSpeed buckets, ZeRO-3 gathers")
    return "\n".join(lines + [f"note: {n}" for n in notes])


# --------------------------------------------------------------------------- command line


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--plan PRESET`` and its options, for ``python -m saferlhfv.bench``."""
    parser.add_argument("--plan", metavar="PRESET",
                        help="print the memory plan of PRESET's PPO (tiny | small | paper or a YAML path; --set "
                             "applies) from the model config alone, nothing measured, and exit")  # fmt: skip
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="--plan: memory of one GPU, GiB (default 80)")
    parser.add_argument("--gpus", type=int, default=1, help="--plan: GPUs, one process each (default 1)")
    parser.add_argument(
        "--zero",
        type=int,
        choices=(0, 2, 3),
        default=None,
        help="--plan: DeepSpeed ZeRO stage (default: the preset's launch config: paper 3, else 0)",
    )
    parser.add_argument("--adam", choices=("mixed", "torch"), default="mixed",
                        help="--plan: AdamW state, fp32 master + moments (mixed, default) or moments in the "
                             "parameter's dtype (torch)")  # fmt: skip
    return parser


def plan_command(args: argparse.Namespace) -> str:
    """What ``--plan`` prints: :func:`format_plan`, or the plan as JSON with ``--json``."""
    cfg = load_config(args.plan, overrides=list(args.overrides))
    plan = plan_memory(cfg, gpus=args.gpus, gpu_gib=args.gpu_gb, zero=args.zero, adam=args.adam)
    if getattr(args, "json", False):
        return json.dumps(plan, indent=2)
    return format_plan(plan)
