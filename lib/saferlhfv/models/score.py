"""A vision-language model with a scalar head: RM-V, CM-V and the PPO critics.

Reads a score for *every* token (the critics need per-token values) and the
**end score** at the last non-pad token of each sequence, located from the
attention mask, so it is right whatever the padding side. The public Safe
RLHF-V code reads position ``-1``, which under right padding is a pad token for
every sequence shorter than the longest one in its batch; that is the bug this
module exists to avoid (``tests/test_score.py`` proves the fix).

Position ids are derived from the attention mask as well, so a left-padded
sequence sees the same positions as the same sequence alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from saferlhfv.io import atomic_directory
from saferlhfv.masks import last_real_index, position_ids_from_mask
from saferlhfv.models.collate import split_shared_prefix
from saferlhfv.models.factory import _seeded, load_saved_vlm, save_vlm
from saferlhfv.models.generation import cache_kwargs, cache_of, model_inputs, select_vision

__all__ = [
    "VLMWithHeads",
    "score_texts",
    "ScoreOutput",
    "ScoreModel",
    "last_token_index",
    "position_ids_from_mask",
    "save_score_model",
    "load_score_model",
]

HEAD_FILE = "score_head.safetensors"
SCORE_CONFIG = "score_config.json"
#: the LoRA adapter of a score model trained with ``model.lora.enabled`` (inside its saved folder).
ADAPTER_DIR = "adapter"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask == 1) token of each row.

    Args:
        attention_mask: ``[B, T]`` of 0/1, any padding side.

    Returns:
        ``[B]`` long tensor of positions in ``0 .. T-1``.

    Raises:
        ValueError: a row has no real token.
    """
    index, nonempty = last_real_index(attention_mask)
    if not nonempty.all():
        empty = (~nonempty).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} of the attention mask have no real token")
    return index


@dataclass
class ScoreOutput:
    """What :class:`ScoreModel` returns.

    Attributes:
        scores: ``[B, T]`` score at every position (pads included; mask them yourself).
        end_scores: ``[B]`` score at the last non-pad token.
        end_index: ``[B]`` the position each end score was read at.
    """

    scores: torch.Tensor
    end_scores: torch.Tensor
    end_index: torch.Tensor


class VLMWithHeads(nn.Module):
    """A VLM backbone (LLaVA or Qwen2-VL, optionally peft-wrapped) whose decoder feeds linear heads.

    The base of :class:`ScoreModel` and :class:`~saferlhfv.models.guard.GuardModel`: the language-
    model head is never used (and is frozen unless it shares the input embeddings), so a forward
    costs one pass of the backbone without the vocabulary projection.
    """

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        lm_head = self._base().get_output_embeddings()
        if lm_head is not None and not getattr(self._text_config(), "tie_word_embeddings", False):
            lm_head.requires_grad_(False)

    def _base(self) -> PreTrainedModel:
        b = self.backbone
        return b.get_base_model() if hasattr(b, "get_base_model") else b

    def _text_config(self):
        cfg = self._base().config
        return getattr(cfg, "text_config", cfg)

    @property
    def config(self):
        """The backbone's config."""
        return self._base().config

    def new_heads(self, sizes: list[int], *, seed: int) -> list[nn.Linear]:
        """Linear heads ``hidden -> size`` for each size, seeded, small normal init, the backbone's dtype."""
        hidden = self._text_config().hidden_size
        dtype = next(self.backbone.parameters()).dtype
        heads = []
        with _seeded(seed):
            for size in sizes:
                head = nn.Linear(hidden, size)
                nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
                nn.init.zeros_(head.bias)
                heads.append(head.to(dtype))
        return heads

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs) -> torch.Tensor:
        """Decoder hidden states ``[B, T, H]``; positions count real tokens only (any padding side).

        The inputs go through :func:`~saferlhfv.models.generation.model_inputs`: LLaVA's position ids from
        the mask, Qwen's prompt-length token types extended over an appended answer.
        """
        core = self._base().model  # LlavaModel / Qwen2VLModel: decoder hidden states, no LM head
        kwargs = model_inputs(input_ids, attention_mask, vision_inputs)
        return core(**kwargs, use_cache=False).last_hidden_state


class ScoreModel(VLMWithHeads):
    """A VLM plus a linear head to one scalar: per-token scores and the end score."""

    def __init__(self, backbone: PreTrainedModel, *, seed: int = 0, head: nn.Linear | None = None):
        super().__init__(backbone)
        (self.score_head,) = [head] if head is not None else self.new_heads([1], seed=seed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs) -> ScoreOutput:
        """Score sequences.

        Args:
            input_ids: ``[B, T]`` token ids, image placeholder tokens included (from the processor).
            attention_mask: ``[B, T]``, 1 for real tokens, 0 for padding (left or right).
            **vision_inputs: the processor's image tensors (``pixel_values``, and for Qwen2-VL
                ``image_grid_thw`` / ``mm_token_type_ids``).

        Returns:
            :class:`ScoreOutput` with ``scores [B, T]`` and ``end_scores [B]``.
        """
        hidden = self.hidden_states(input_ids, attention_mask, **vision_inputs)  # [B, T, H]
        scores = self.score_head(hidden).squeeze(-1)  # [B, T]
        end_index = last_token_index(attention_mask)
        end_scores = scores.gather(1, end_index.unsqueeze(1)).squeeze(1)
        return ScoreOutput(scores=scores, end_scores=end_scores, end_index=end_index)

    def pair_end_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """End scores of both answers of each preference pair, reading the pair's shared prompt once.

        The two rows of a pair (``i`` and ``B + i`` of :func:`~saferlhfv.models.collate.pair_batch`) hold
        the same picture and question: their key/value states up to the first token where the answers
        differ are the same. One pass reads that shared prefix for the ``B`` pairs (the vision tower on
        ``B`` pictures instead of ``2B``), a second reads the ``2B`` answers through its KV cache. Equal to
        ``forward(...).end_scores`` split in halves up to float rounding, gradients included (the prefix's
        keys and values receive the gradient of both answers); a pair costs ``P + A_a + A_b`` token
        positions instead of ``2 (P + max A)``.

        With gradient checkpointing the decoder keeps no cache in training, so that case (and a batch of
        one row) takes the plain two-row pass.

        Args:
            input_ids, attention_mask: ``[2B, T]``, right-padded, ``a`` rows first (``pair_batch``).
            **vision_inputs: the processor's image tensors of the ``2B`` rows; rows ``i`` and ``B + i`` carry
                the same picture.

        Returns:
            ``(a, b)``: ``[B]`` end scores of the first and the second answer of each pair.

        Raises:
            ValueError: the two rows of a pair carry different pictures (their image tokens are the same ids,
                so the shared prefix would read the first row's picture for both).
        """
        B = input_ids.shape[0] // 2
        base = self._base()
        checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.x's name
        if checkpointing is None:
            checkpointing = base.is_gradient_checkpointing
        if (self.training and checkpointing) or B == 0:
            end = self(input_ids, attention_mask, **vision_inputs).end_scores
            return end[:B], end[B:]
        cut = split_shared_prefix(input_ids, attention_mask)
        pixels = vision_inputs.get("pixel_values")  # rows (LLaVA) or patches (Qwen2-VL): a rows' first either way
        if pixels is not None and not torch.equal(*pixels.chunk(2)):
            raise ValueError("pair_end_scores needs the same picture in rows i and B + i (pair_batch's layout)")
        vision = select_vision(vision_inputs, torch.arange(B, device=input_ids.device))
        if "mm_token_type_ids" in vision:  # per-token: lay it out like the prefix's ids
            vision["mm_token_type_ids"] = vision["mm_token_type_ids"].gather(1, cut.prefix_index) * cut.prefix_mask
        core = base.model
        out = core(**model_inputs(cut.prefix_ids, cut.prefix_mask, vision), use_cache=True)
        cache = cache_of(out)
        cache.batch_repeat_interleave(2)  # each pair's prefix, once for each of its two rows
        mask = cut.full_mask()
        positions = position_ids_from_mask(mask)[:, cut.prefix_ids.shape[1] :]
        if "image_grid_thw" in vision:  # Qwen2-VL: text positions shifted by the deltas its prefix pass stored
            positions = positions[None] + core.rope_deltas.repeat_interleave(2, dim=0)
        hidden = core(
            input_ids=cut.suffix_ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **cache_kwargs(core, cache),
        ).last_hidden_state  # fmt: skip
        scores = self.score_head(hidden).squeeze(-1)  # [2B, A]
        end = scores.gather(1, last_token_index(cut.suffix_mask).unsqueeze(1)).view(B, 2)
        return end[:, 0], end[:, 1]


@torch.no_grad()
def score_texts(
    model: ScoreModel, processor: ProcessorMixin, images, questions, responses, *, batch_size: int = 32
) -> list[float]:
    """End scores of (image, question, response) triples, in batches.

    Args:
        images, questions, responses: equal-length sequences (PIL images, strings, strings).

    Returns:
        One float per triple: the score at the last real token of the chat-formatted sequence.
    """
    from saferlhfv.models.generation import encode_prompts

    if not (len(images) == len(questions) == len(responses)):
        raise ValueError("score_texts needs as many images, questions and responses")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(questions), batch_size):
        end = start + batch_size
        batch = encode_prompts(
            processor, list(images[start:end]), list(questions[start:end]), list(responses[start:end]),
            padding_side="right",
        ).to(device)  # fmt: skip
        scores += model(**batch).end_scores.float().cpu().tolist()
    model.train(was_training)
    return scores


def save_score_model(model: ScoreModel, processor: ProcessorMixin, path: str | Path) -> Path:
    """Save backbone + processor + head into ``path`` atomically (safetensors).

    A LoRA (peft) backbone is saved twice: merged into ``backbone/`` (what :func:`load_score_model`
    reads) and as the bare adapter in ``adapter/`` (what the shared-base PPO mode loads onto the
    SFT model it was trained on).
    """
    path = Path(path)
    with atomic_directory(path) as tmp:
        save_vlm(model.backbone, processor, tmp / "backbone")
        if hasattr(model.backbone, "peft_config"):
            model.backbone.save_pretrained(tmp / ADAPTER_DIR)
        save_file({k: v.detach().contiguous() for k, v in model.score_head.state_dict().items()}, tmp / HEAD_FILE)
        (tmp / SCORE_CONFIG).write_text(
            json.dumps({"kind": "score_model", "hidden_size": model.score_head.in_features})
        )
    return path


def load_score_model(path: str | Path, *, dtype: str = "float32") -> tuple[ScoreModel, ProcessorMixin]:
    """Load what :func:`save_score_model` wrote."""
    path = Path(path)
    if not (path / SCORE_CONFIG).is_file():
        raise FileNotFoundError(f"no saved score model in {path} ({SCORE_CONFIG} missing)")
    backbone, processor = load_saved_vlm(path / "backbone", dtype=dtype)
    model = ScoreModel(backbone)
    model.score_head.load_state_dict(load_file(path / HEAD_FILE))
    return model, processor
