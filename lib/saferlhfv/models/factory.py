"""Build or load the vision-language models every stage trains.

Two routes, one interface (``(model, processor)``, both Hugging Face objects):

* **tiny** (``ModelConfig.family == "tiny"``): a real LLaVA (or, for tests,
  Qwen2-VL) architecture with random weights, sized from the ``tiny_*`` fields,
  with a byte-level BPE tokenizer trained locally on a corpus the caller gives
  and a processor with a chat template. Offline, deterministic from
  the ``seed`` argument (a run's ``Config.seed``), about 1-2 M parameters: a CPU trains it in minutes.
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
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
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
    "apply_lora",
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
#: architectures the tiny route can build (LLaVA for training, Qwen2-VL for tests of that family).
TINY_ARCHS = ("llava", "qwen2_vl")

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

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


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 1024, arch: str = "llava") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus``, fully offline and deterministic.

    Byte-level BPE encodes any string (garbled model output included) without an
    unknown token, and decodes losslessly.

    Args:
        corpus: the texts to learn merges from (the mini world's questions and responses).
        vocab_size: final vocabulary size, special tokens and the 256 byte symbols included.
        arch: ``"llava"`` adds ``<image>``; ``"qwen2_vl"`` adds Qwen's vision tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad / bos / eos set and ``image_token`` attached.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {TINY_ARCHS}")
    specials = [PAD, BOS, EOS] + ([IMAGE] if arch == "llava" else list(QWEN_SPECIALS))
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
    image_token = IMAGE if arch == "llava" else "<|image_pad|>"
    extra = {"image_token": image_token}
    if arch == "qwen2_vl":
        extra.update(
            {
                "vision_bos_token": "<|vision_start|>",
                "vision_eos_token": "<|vision_end|>",
                "video_token": "<|video_pad|>",
            }
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, extra_special_tokens=extra
    )


# --------------------------------------------------------------------------- tiny models


@contextmanager
def _seeded(seed: int):
    """Run a block under a fixed torch seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_llava(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    text = LlamaConfig(
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
    vision = CLIPVisionConfig(
        hidden_size=cfg.tiny_vision_hidden_size,
        intermediate_size=4 * cfg.tiny_vision_hidden_size,
        num_hidden_layers=cfg.tiny_vision_layers,
        num_attention_heads=cfg.tiny_vision_heads,
        image_size=cfg.tiny_image_size,
        patch_size=cfg.tiny_patch_size,
        projection_dim=cfg.tiny_vision_hidden_size,
    )
    n_image_tokens = (cfg.tiny_image_size // cfg.tiny_patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
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


def _tiny_qwen2_vl(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    head_dim = cfg.tiny_hidden_size // cfg.tiny_heads
    half = head_dim // 2  # mrope splits the rotary half-dimension over (time, height, width)
    section = [half - 2 * (half // 3), half // 3, half // 3]
    merge = 2
    config = Qwen2VLConfig(
        text_config={
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
        },
        vision_config={
            "depth": cfg.tiny_vision_layers,
            "embed_dim": cfg.tiny_vision_hidden_size,
            "hidden_size": cfg.tiny_hidden_size,
            "num_heads": cfg.tiny_vision_heads,
            "patch_size": cfg.tiny_patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config)
    pixels = cfg.tiny_image_size**2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=cfg.tiny_patch_size, merge_size=merge, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels
    )
    processor = TinyQwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE.replace("@IMAGE@", "<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return model, processor


def build_tiny_vlm(
    cfg: ModelConfig, corpus: Iterable[str], *, arch: str = "llava", seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a random-weight tiny VLM and its processor from ``cfg``'s ``tiny_*`` fields.

    Args:
        cfg: model config; its ``tiny_*`` fields set the sizes.
        corpus: texts the tokenizer learns its merges from.
        arch: ``"llava"`` (CLIP vision tower + Llama decoder, what the tiny preset trains)
            or ``"qwen2_vl"`` (same classes as the real Qwen2-VL, used by tests).

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
        model, processor = (_tiny_llava if arch == "llava" else _tiny_qwen2_vl)(cfg, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
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


def _finish(model: PreTrainedModel, cfg: ModelConfig):
    if cfg.freeze_vision_tower:
        vision_tower(model).requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
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
        model, processor = build_tiny_vlm(cfg, corpus, seed=seed)
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
    if saved.get("processor_class") == TinyQwen2VLProcessor.__name__:
        processor = TinyQwen2VLProcessor.from_pretrained(path)
    else:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=_dtype(dtype), use_safetensors=True, trust_remote_code=False
    )
    return model, processor


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
