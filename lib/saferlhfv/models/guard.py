"""Beaver-Guard-V: a vision-language model with three moderation heads.

The guard reads the decoder's hidden state at the **last real token** (as the
score models do, :func:`~saferlhfv.models.score.last_token_index`) and puts three
linear heads on it:

* ``unsafe``: one logit, ``p_unsafe = sigmoid(logit)``;
* ``category``: 20 logits, the BeaverTails-V harm categories
  (:data:`saferlhfv.data.content.CATEGORIES`);
* ``severity``: 4 logits, none / minor / moderate / severe
  (:data:`saferlhfv.data.content.SEVERITY_NAMES`).

One model, two modes, told apart by the text it reads:

* **input moderation**: ``USER: <image>\\n{question} ASSISTANT:`` (the generation prompt,
  no answer yet): is the *request* harmful?
* **output moderation**: ``USER: <image>\\n{question} ASSISTANT: {response}</s>``: is the
  *answer* harmful?

Loss (:func:`guard_loss`)::

    L = BCE(unsafe) + w_cat * CE(category) + w_sev * CE(severity)

with the category term over every row or over unsafe rows only, plus an optional
auxiliary *grounding* term ``w_obj * CE(object)``: a fourth head names the object the picture
shows (the mini world knows it). The tiny backbone barely recognises objects after SFT; the
7B backbones the paper uses already do, so the real path leaves it off. With a real VLM the
backbone is LoRA-wrapped by the caller; the heads are plain ``nn.Linear`` layers either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from saferlhfv.data.content import CATEGORIES, SEVERITY_NAMES
from saferlhfv.data.rgb import to_rgb
from saferlhfv.io import atomic_directory
from saferlhfv.models.factory import load_saved_vlm, save_vlm
from saferlhfv.models.generation import render_prompts
from saferlhfv.models.score import VLMWithHeads, last_token_index

__all__ = [
    "GuardOutput",
    "GuardModel",
    "encode_guard_inputs",
    "guard_loss",
    "save_guard_model",
    "load_guard_model",
    "HEADS_FILE",
]

HEADS_FILE = "guard_heads.safetensors"
GUARD_CONFIG = "guard_config.json"


@dataclass
class GuardOutput:
    """What :class:`GuardModel` returns (all read at the last real token).

    Attributes:
        unsafe_logit: ``[B]``; ``sigmoid`` gives the unsafe probability.
        category_logits: ``[B, 20]``.
        severity_logits: ``[B, 4]`` (none, minor, moderate, severe).
        end_index: ``[B]`` the position the heads read.
    """

    unsafe_logit: torch.Tensor
    category_logits: torch.Tensor
    severity_logits: torch.Tensor
    end_index: torch.Tensor
    object_logits: torch.Tensor | None = None

    @property
    def p_unsafe(self) -> torch.Tensor:
        return torch.sigmoid(self.unsafe_logit.float())


class GuardModel(VLMWithHeads):
    """A VLM (LLaVA or Qwen2-VL, optionally peft-wrapped) plus unsafe / category / severity heads.

    Args:
        backbone: a ``*ForConditionalGeneration`` VLM; its LM head is not used.
        n_categories: size of the category head (20 for BeaverTails-V).
        n_severity: size of the severity head (4: none, minor, moderate, severe).
        n_objects: size of the auxiliary object (grounding) head; 0 = no such head.
        seed: initialises the heads reproducibly without touching the caller's RNG.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        *,
        n_categories: int = len(CATEGORIES),
        n_severity: int = len(SEVERITY_NAMES),
        n_objects: int = 0,
        seed: int = 0,
    ):
        super().__init__(backbone)
        heads = self.new_heads([1, n_categories, n_severity] + ([n_objects] if n_objects else []), seed=seed)
        self.unsafe_head, self.category_head, self.severity_head = heads[:3]
        self.object_head = heads[3] if n_objects else None

    def heads(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The three moderation heads: unsafe, category, severity."""
        return self.unsafe_head, self.category_head, self.severity_head

    def all_heads(self) -> list[nn.Linear]:
        """The moderation heads plus the object head, if any."""
        return [*self.heads(), *([self.object_head] if self.object_head is not None else [])]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs) -> GuardOutput:
        """Moderate a batch (any padding side; inputs from :func:`encode_guard_inputs`)."""
        hidden = self.hidden_states(input_ids, attention_mask, **vision_inputs)
        end_index = last_token_index(attention_mask)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), end_index]  # [B, H]
        return GuardOutput(
            unsafe_logit=self.unsafe_head(h).squeeze(-1),
            category_logits=self.category_head(h),
            severity_logits=self.severity_head(h),
            end_index=end_index,
            object_logits=self.object_head(h) if self.object_head is not None else None,
        )


def encode_guard_inputs(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses: Sequence[str | None] | None = None,
) -> dict[str, torch.Tensor]:
    """One right-padded batch mixing input-moderation and output-moderation rows.

    Args:
        responses: per row the answer to moderate, or ``None`` / ``""`` for input moderation
            (the row then ends with the generation prompt). ``None`` for the whole batch = all input rows.

    Returns:
        The processor's tensors (``input_ids``, ``attention_mask``, image tensors).
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    responses = [None] * len(questions) if responses is None else list(responses)
    if len(responses) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
    texts = []
    for q, r in zip(questions, responses):
        texts += render_prompts(processor, [q], None if not r else [r])
    tokenizer = processor.tokenizer
    previous, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        return processor(images=[to_rgb(im) for im in images], text=texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous


def guard_loss(
    out: GuardOutput,
    is_unsafe: torch.Tensor,
    category: torch.Tensor,
    severity: torch.Tensor,
    *,
    category_weight: float = 1.0,
    severity_weight: float = 1.0,
    category_on_unsafe_only: bool = False,
    objects: torch.Tensor | None = None,
    object_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``BCE(unsafe) + w_cat * CE(category) + w_sev * CE(severity) [+ w_obj * CE(object)]``.

    Args:
        is_unsafe: ``[B]`` 0/1; category: ``[B]`` class ids 0..19; severity: ``[B]`` 0..3.
        category_on_unsafe_only: the category term over unsafe rows only (zero when a batch has none).
        objects: ``[B]`` object ids for the grounding head (``-100`` = unknown), used when
            ``object_weight > 0`` and the model has an object head.

    Returns:
        ``(loss, stats)``: the loss and its three terms plus the batch's unsafe accuracy, as floats.
    """
    target = is_unsafe.float()
    bce = F.binary_cross_entropy_with_logits(out.unsafe_logit.float(), target)
    cat_logits = out.category_logits.float()
    if category_on_unsafe_only:
        keep = target > 0.5
        ce_cat = F.cross_entropy(cat_logits[keep], category[keep]) if keep.any() else cat_logits.sum() * 0.0
    else:
        ce_cat = F.cross_entropy(cat_logits, category)
    ce_sev = F.cross_entropy(out.severity_logits.float(), severity)
    loss = bce + category_weight * ce_cat + severity_weight * ce_sev
    terms = [("bce", bce), ("ce_category", ce_cat), ("ce_severity", ce_sev)]
    if object_weight and objects is not None and out.object_logits is not None and (objects >= 0).any():
        ce_obj = F.cross_entropy(out.object_logits.float(), objects, ignore_index=-100)
        loss = loss + object_weight * ce_obj
        terms.append(("ce_object", ce_obj))
    acc = ((out.unsafe_logit.detach() > 0).float() == target).float().mean()
    stats = {k: float(v.detach()) for k, v in terms}
    stats["unsafe_acc"] = float(acc)
    return loss, stats


def save_guard_model(model: GuardModel, processor: ProcessorMixin, path: str | Path) -> Path:
    """Save backbone (LoRA merged in, if any) + processor + heads into ``path`` atomically."""
    path = Path(path)
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):  # a peft wrapper: save plain full weights
        backbone = backbone.merge_and_unload()
        model.backbone = backbone
    heads = {}
    for name, head in zip(("unsafe", "category", "severity", "object"), model.all_heads()):
        for k, v in head.state_dict().items():
            heads[f"{name}.{k}"] = v.detach().contiguous()
    with atomic_directory(path) as tmp:
        save_vlm(backbone, processor, tmp / "backbone")
        save_file(heads, tmp / HEADS_FILE)
        (tmp / GUARD_CONFIG).write_text(
            json.dumps(
                {
                    "kind": "guard_model",
                    "categories": list(CATEGORIES),
                    "severity": list(SEVERITY_NAMES),
                    "n_categories": model.category_head.out_features,
                    "n_severity": model.severity_head.out_features,
                    "n_objects": model.object_head.out_features if model.object_head is not None else 0,
                }
            )
        )
    return path


def load_guard_model(path: str | Path, *, dtype: str = "float32") -> tuple[GuardModel, ProcessorMixin]:
    """Load what :func:`save_guard_model` wrote (in eval mode)."""
    path = Path(path)
    if not (path / GUARD_CONFIG).is_file():
        raise FileNotFoundError(f"no saved guard model in {path} ({GUARD_CONFIG} missing)")
    meta = json.loads((path / GUARD_CONFIG).read_text())
    backbone, processor = load_saved_vlm(path / "backbone", dtype=dtype)
    model = GuardModel(
        backbone, n_categories=meta["n_categories"], n_severity=meta["n_severity"], n_objects=meta.get("n_objects", 0)
    )
    state = load_file(path / HEADS_FILE)
    for name, head in zip(("unsafe", "category", "severity", "object"), model.all_heads()):
        head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")})
    return model.eval(), processor
