"""Build or load the vision-language models every stage trains.

Two routes, one interface (``(model, processor)``, both Hugging Face objects):

* **tiny** (``ModelConfig.family == "tiny"``): the real classes of one family
  (``model.tiny_arch``: LLaVA-1.5, the default and what the tiny preset trains; LLaVA-NeXT,
  Qwen2-VL, Qwen2.5-VL for tests and the GPU check) with random weights, sized from the
  ``tiny_*`` fields, with a byte-level BPE tokenizer trained locally on a corpus the caller
  gives and a processor with the family's chat template and special tokens. Offline,
  deterministic from the ``seed`` argument (a run's ``Config.seed``), about 1-2 M parameters:
  a CPU trains it in minutes.
* **real** (``"llava"``, ``"llava_next"``, ``"qwen2_vl"``, ``"qwen2_5_vl"``):
  ``from_pretrained`` with dtype, device map, gradient checkpointing, a frozen
  vision tower and LoRA (peft) as the config asks. Without network access a
  :class:`ModelNotAvailableError` says so and points at the tiny preset.

Saving writes safetensors through ``save_pretrained`` into a temporary folder
that is renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from saferlhfv.config import LoraConfig, ModelConfig
from saferlhfv.io import atomic_directory

__all__ = [
    "REAL_FAMILIES",
    "TINY_ARCHS",
    "ModelNotAvailableError",
    "train_tokenizer",
    "build_tiny_vlm",
    "load_pretrained_vlm",
    "load_vlm",
    "save_vlm",
    "merged_copy",
    "load_saved_vlm",
    "load_backbone",
    "apply_lora",
    "prepare_for_training",
    "vision_tower",
    "language_model",
    "count_parameters",
]

#: real model families and an example checkpoint of each.
REAL_FAMILIES = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
}
#: architectures the tiny route can build: the real classes of each family (LLaVA is what the tiny
#: preset trains; the others run in tests and the GPU check).
TINY_ARCHS = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl")

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
#: Qwen2-VL-Instruct's text specials: pad / end of text, and the turn markers (its eos is <|im_end|>).
QWEN_TEXT = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}@IMAGE@\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


#: LLaVA-NeXT (llava-v1.6-mistral-7b-hf's chat_template.json): "[INST] <image>\nq [/INST] answer</s> ".
_LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% endif %}{% endfor %}"
)

#: Qwen2-VL-Instruct's chat template (also Qwen2.5-VL-Instruct's): a system turn, then
#: "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>q<|im_end|>\n<|im_start|>assistant\n".
_QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelNotAvailableError(RuntimeError):
    """A pretrained model cannot be loaded (no network, wrong id, missing files)."""


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only: no video processor.

    The stock processor requires a video processor, and video processors need
    torchvision, which the CPU machines this project tests on do not have. Images go
    through exactly the stock code path; only videos are unsupported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class TinyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images only, like :class:`TinyQwen2VLProcessor`."""

    __init__ = TinyQwen2VLProcessor.__init__


#: processors of the tiny route that ``AutoProcessor`` cannot rebuild from a saved folder.
_TINY_PROCESSORS = {cls.__name__: cls for cls in (TinyQwen2VLProcessor, TinyQwen2_5_VLProcessor)}


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 1024, arch: str = "llava") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus``, fully offline and deterministic.

    Byte-level BPE encodes any string (garbled model output included) without an
    unknown token, and decodes losslessly.

    Args:
        corpus: the texts to learn merges from (the mini world's questions and responses).
        vocab_size: final vocabulary size, special tokens and the 256 byte symbols included.
        arch: a :data:`TINY_ARCHS` name. The LLaVA families get ``<pad> <s> </s> <image>``; the Qwen
            families get Qwen2-VL-Instruct's specials: pad ``<|endoftext|>``, eos ``<|im_end|>``, the
            turn marker ``<|im_start|>`` and the vision tokens (no BOS, as Qwen has none).

    Returns:
        A ``PreTrainedTokenizerFast`` with pad / eos (and bos) set and ``image_token`` attached.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {TINY_ARCHS}")
    qwen = arch in QWEN_ARCHS
    specials = list(QWEN_TEXT + QWEN_SPECIALS) if qwen else [PAD, BOS, EOS, IMAGE]
    texts = [t for t in corpus if t]
    if not texts:
        raise ValueError("train_tokenizer needs a non-empty corpus")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if not qwen:
        extra = {"image_token": IMAGE}
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, extra_special_tokens=extra
        )
    extra = {
        "image_token": "<|image_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "video_token": "<|video_pad|>",
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=extra
    )


# --------------------------------------------------------------------------- tiny models


@contextmanager
def _seeded(seed: int):
    """Run a block under a fixed torch seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_llama_text(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=cfg.tiny_max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _tiny_clip(cfg: ModelConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.tiny_vision_hidden_size,
        intermediate_size=4 * cfg.tiny_vision_hidden_size,
        num_hidden_layers=cfg.tiny_vision_layers,
        num_attention_heads=cfg.tiny_vision_heads,
        image_size=cfg.tiny_image_size,
        patch_size=cfg.tiny_patch_size,
        projection_dim=cfg.tiny_vision_hidden_size,
    )


def _tiny_llava(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    n_image_tokens = (cfg.tiny_image_size // cfg.tiny_patch_size) ** 2
    config = LlavaConfig(
        vision_config=_tiny_clip(cfg),
        text_config=_tiny_llama_text(cfg, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.tiny_image_size},
        crop_size={"height": cfg.tiny_image_size, "width": cfg.tiny_image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.tiny_patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the vision tower adds and "default" drops
        chat_template=_CHAT_TEMPLATE.replace("@IMAGE@", IMAGE),
    )
    return model, processor


def _tiny_llava_next(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-NeXT ("anyres"): the picture as a whole plus tiles at one grid resolution (the picture's own size)."""
    side = cfg.tiny_image_size
    config = LlavaNextConfig(
        vision_config=_tiny_clip(cfg),
        text_config=_tiny_llama_text(cfg, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_grid_pinpoints=[[side, side]],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=[[side, side]]
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.tiny_patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_NEXT_TEMPLATE,
    )
    return model, processor


def _qwen_text(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> dict:
    head_dim = cfg.tiny_hidden_size // cfg.tiny_heads
    half = head_dim // 2  # mrope splits the rotary half-dimension over (time, height, width)
    section = [half - 2 * (half // 3), half // 3, half // 3]
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.tiny_hidden_size,
        "intermediate_size": cfg.tiny_intermediate_size,
        "num_hidden_layers": cfg.tiny_layers,
        "num_attention_heads": cfg.tiny_heads,
        "num_key_value_heads": cfg.tiny_heads,
        "max_position_embeddings": cfg.tiny_max_positions,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _qwen_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _tiny_qwen2_vl(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    merge = 2
    config = Qwen2VLConfig(
        text_config=_qwen_text(cfg, tokenizer),
        vision_config={
            "depth": cfg.tiny_vision_layers,
            "embed_dim": cfg.tiny_vision_hidden_size,
            "hidden_size": cfg.tiny_hidden_size,
            "num_heads": cfg.tiny_vision_heads,
            "patch_size": cfg.tiny_patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config)
    return model, _qwen_processor(cfg, tokenizer, TinyQwen2VLProcessor, merge)


def _tiny_qwen2_5_vl(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2.5-VL: Qwen2-VL's layout with a windowed-attention vision tower (RMSNorm, SwiGLU)."""
    merge = 2
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(cfg, tokenizer),
        vision_config={
            "depth": cfg.tiny_vision_layers,
            "hidden_size": cfg.tiny_vision_hidden_size,
            "intermediate_size": 2 * cfg.tiny_vision_hidden_size,
            "out_hidden_size": cfg.tiny_hidden_size,
            "num_heads": cfg.tiny_vision_heads,
            "patch_size": cfg.tiny_patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "window_size": 2 * merge * cfg.tiny_patch_size,  # windows of 2 x 2 merged patches
            "fullatt_block_indexes": [cfg.tiny_vision_layers - 1],
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model, _qwen_processor(cfg, tokenizer, TinyQwen2_5_VLProcessor, merge)


def _qwen_processor(cfg: ModelConfig, tokenizer, cls, merge: int) -> ProcessorMixin:
    pixels = cfg.tiny_image_size**2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=cfg.tiny_patch_size, merge_size=merge, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels
    )
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=_QWEN_TEMPLATE)


_TINY_BUILDERS = {
    "llava": _tiny_llava,
    "llava_next": _tiny_llava_next,
    "qwen2_vl": _tiny_qwen2_vl,
    "qwen2_5_vl": _tiny_qwen2_5_vl,
}


def build_tiny_vlm(
    cfg: ModelConfig, corpus: Iterable[str], *, arch: str = "llava", seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a random-weight tiny VLM and its processor from ``cfg``'s ``tiny_*`` fields.

    Args:
        cfg: model config; its ``tiny_*`` fields set the sizes.
        corpus: texts the tokenizer learns its merges from.
        arch: a :data:`TINY_ARCHS` name: ``"llava"`` (CLIP vision tower + Llama decoder, what the tiny
            preset trains), ``"llava_next"``, ``"qwen2_vl"`` or ``"qwen2_5_vl"`` (the real classes of
            those families, with their chat templates: tests and the GPU check).

    Returns:
        ``(model, processor)``: a ``*ForConditionalGeneration`` in train mode and its processor.
    """
    tokenizer = train_tokenizer(corpus, vocab_size=cfg.tiny_vocab_size, arch=arch)
    if cfg.tiny_image_size % cfg.tiny_patch_size:
        raise ValueError(
            f"model.tiny_image_size ({cfg.tiny_image_size}) must be a multiple of "
            f"model.tiny_patch_size ({cfg.tiny_patch_size})"
        )
    with _seeded(seed):
        model, processor = _TINY_BUILDERS[arch](cfg, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Qwen2-VL-Instruct stops on <|im_end|> and on <|endoftext|> (its generation_config.json lists both)
    ends = [tokenizer.eos_token_id] + ([tokenizer.pad_token_id] if arch in QWEN_ARCHS else [])
    model.generation_config.eos_token_id = ends if len(ends) > 1 else ends[0]
    return model.to(_dtype(cfg.dtype)), processor


# --------------------------------------------------------------------------- real models


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}") from None


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder of a LLaVA or Qwen2-VL model (also inside a peft wrapper)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(inner, "model", inner)
    for name in ("vision_tower", "visual"):
        if hasattr(core, name):
            return getattr(core, name)
    raise AttributeError(f"{type(inner).__name__} has no vision tower (looked for vision_tower / visual)")


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (no LM head) of a LLaVA or Qwen2-VL model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(inner, "model", inner)
    return core.language_model


def apply_lora(model: PreTrainedModel, lora: LoraConfig, *, adapter_name: str = "default"):
    """Wrap ``model`` with peft LoRA adapters on the *language model*'s projections only.

    The vision tower's modules share names like ``q_proj`` with the decoder's; a regex
    keeps the adapters in the decoder, as LLaVA and Qwen2-VL fine-tuning usually does.
    Every weight of ``model`` is frozen; only the adapter ``adapter_name`` trains.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = "|".join(lora.target_modules)
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=rf".*language_model.*\.({names})",
        bias="none",
    )
    return get_peft_model(model, peft_cfg, adapter_name=adapter_name)


def prepare_for_training(model: PreTrainedModel, cfg: ModelConfig, *, freeze_vision: bool = False) -> PreTrainedModel:
    """What every stage that fine-tunes a loaded model does first, as ``model`` (the config section) asks.

    The vision tower is frozen with ``cfg.freeze_vision_tower`` (or ``freeze_vision``: a stage's own
    switch) and activations are recomputed with ``cfg.gradient_checkpointing``. The same for SFT,
    RM-V / CM-V, the guard, the monitor and PPO's actor and critics: the paper freezes the tower in
    every stage after pretraining. Returns ``model`` (changed in place); LoRA is the caller's choice.
    """
    if cfg.freeze_vision_tower or freeze_vision:
        vision_tower(model).requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def _finish(model: PreTrainedModel, cfg: ModelConfig):
    model = prepare_for_training(model, cfg)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model


def load_pretrained_vlm(cfg: ModelConfig) -> tuple[PreTrainedModel, ProcessorMixin]:
    """``from_pretrained`` a real VLM and its processor as ``cfg`` asks.

    Raises:
        ModelNotAvailableError: the weights or processor cannot be loaded (e.g. offline);
            the message names the tiny preset as the offline alternative.
    """
    if cfg.family not in REAL_FAMILIES:
        raise ValueError(f"model.family must be 'tiny' or one of {sorted(REAL_FAMILIES)}, got {cfg.family!r}")
    name = cfg.name_or_path or REAL_FAMILIES[cfg.family]
    try:
        # untrusted files: never run code shipped with a hub repo (docs/reliability.md)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(
            name,
            dtype=_dtype(cfg.dtype),
            device_map=cfg.device_map,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as err:  # offline, gated, wrong id, missing files
        raise ModelNotAvailableError(
            f"cannot load {cfg.family} model {name!r}: {err.__class__.__name__}: {str(err).splitlines()[0]}\n"
            "It must be downloaded from the Hugging Face hub (or point model.name_or_path at a local copy). "
            "Offline, use the tiny preset instead: --preset tiny (or load_config('tiny')), which builds a "
            "small LLaVA-architecture model locally."
        ) from err
    return _finish(model, cfg), processor


def load_vlm(
    cfg: ModelConfig, corpus: Iterable[str] | None = None, *, seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model a config names: a fresh tiny VLM (needs ``corpus``; ``seed`` fixes its weights, the
    run's ``Config.seed``) or a pretrained one."""
    if cfg.family == "tiny":
        if corpus is None:
            raise ValueError("the tiny model trains its tokenizer on a corpus: pass corpus=...")
        model, processor = build_tiny_vlm(cfg, corpus, arch=cfg.tiny_arch, seed=seed)
        return _finish(model, cfg), processor
    return load_pretrained_vlm(cfg)


# --------------------------------------------------------------------------- save / load


def merged_copy(model: torch.nn.Module) -> PreTrainedModel:
    """A plain model: ``model`` itself, or for a peft-wrapped one a copy with its active adapter merged in.

    The copy holds a second set of weights while it lives; the wrapped model is left untouched.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_vlm(model: PreTrainedModel, processor: ProcessorMixin, path: str | Path) -> Path:
    """Save model (safetensors) and processor into ``path`` atomically.

    A peft-wrapped model is saved with its LoRA adapter merged (:func:`merged_copy`), so the folder
    always loads with :func:`load_saved_vlm` as a plain model.
    """
    with atomic_directory(path) as tmp:
        merged_copy(model).save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return Path(path)


def load_saved_vlm(path: str | Path, *, dtype: str = "float32") -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load what :func:`save_vlm` wrote: safetensors weights only (no pickle), no code from the folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {path} (config.json missing); train it first or check the path")
    saved = (
        json.loads((path / "processor_config.json").read_text()) if (path / "processor_config.json").is_file() else {}
    )
    if saved.get("processor_class") in _TINY_PROCESSORS:
        processor = _TINY_PROCESSORS[saved["processor_class"]].from_pretrained(path)
    else:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=_dtype(dtype), use_safetensors=True, trust_remote_code=False
    )
    return model, processor


def load_backbone(path: str | Path, cfg: ModelConfig, *, freeze_vision: bool = False):
    """A saved SFT model as the backbone of a head model (the guard, the monitor): loaded in ``cfg.dtype``,
    :func:`prepare_for_training`, and LoRA adapters for a real family with ``cfg.lora.enabled`` (the tiny
    backbone is small: it trains whole). Returns ``(model, processor)``."""
    backbone, processor = load_saved_vlm(path, dtype=cfg.dtype)
    backbone = prepare_for_training(backbone, cfg, freeze_vision=freeze_vision)
    if cfg.family != "tiny" and cfg.lora.enabled:
        backbone = apply_lora(backbone, cfg.lora)
    return backbone, processor


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@contextmanager
def quiet_loading():
    """No "Loading weights" progress bars from transformers while several models load (restored after)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
