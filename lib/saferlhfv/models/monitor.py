"""A streaming content monitor: a VLM that scores an answer while it is being written.

After Li et al. (2025), "From Judgment to Interference: Early Stopping LLM Harmful Outputs via
Streaming Content Monitoring" (SCM). The backbone's decoder feeds two heads at every position
(:class:`StreamingMonitor`):

* **token head** (dropout 0.1, ``hidden -> 2``): is *this token* part of harmful content?
  Trained on token labels (1 on the words of harmful units, 0 on the other response tokens,
  prompt and padding ignored);
* **response head** (``hidden -> 2``): is the *answer so far* harmful? Trained at the answer's
  last real token (its end-of-turn token) on the answer's label. At inference it is read at
  every response position ``t``, which gives ``P(harmful | answer up to t)`` for every prefix
  from one forward pass (a causal decoder's state at ``t`` sees nothing after ``t``).

Loss (:func:`monitor_loss`), ``p = P_response(harmful)`` at the last real token and
``g = max_t P_token(harmful)_t`` over the response's tokens::

    L = alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic
    L_logic = -log(1 - p + p * g)

``L_logic`` is the soft form of "a harmful answer contains a harmful token": it is 0 when
``p = 0`` or ``g = 1`` and grows as ``-log(1 - p)`` when the answer is called harmful but no
token is. SCM's defaults: ``alpha = 0.6``, ``gamma = 1``; the baseline ``alpha = gamma = 0``
learns from answer labels only.

Streaming (:mod:`saferlhfv.models.streaming`) feeds the answer one token at a time through the
monitor's own KV cache, giving exactly the per-position scores of one full forward pass, and
lets a policy write token by token until the rule of
:func:`saferlhfv.algorithms.streaming.stop_position` fires.
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

from saferlhfv.algorithms.streaming import pad_scores
from saferlhfv.io import atomic_directory
from saferlhfv.models.collate import IGNORE_INDEX
from saferlhfv.models.factory import load_saved_vlm, save_vlm
from saferlhfv.models.generation import encode_prompts, render_prompts
from saferlhfv.models.score import VLMWithHeads, last_token_index

__all__ = [
    "MonitorOutput",
    "StreamingMonitor",
    "response_token_labels",
    "encode_monitor_batch",
    "monitor_loss",
    "score_answers",
    "first_harmful_token",
    "save_monitor",
    "load_monitor",
    "HEADS_FILE",
    "LABEL_KEYS",
]

HEADS_FILE = "monitor_heads.safetensors"
MONITOR_CONFIG = "monitor_config.json"
#: the batch keys that carry labels (a forward pass must not receive them).
LABEL_KEYS = ("label_tokens", "label_response", "response_mask")


@dataclass
class MonitorOutput:
    """What :class:`StreamingMonitor` returns.

    Attributes:
        token_logits: ``[B, T, 2]`` the token head at every position (class 1 = harmful token).
        response_logits: ``[B, T, 2]`` the response head at every position: at ``t``, is the
            sequence up to ``t`` a harmful answer (class 1)?
        end_index: ``[B]`` the last real token of each row (where the response head is trained).
    """

    token_logits: torch.Tensor
    response_logits: torch.Tensor
    end_index: torch.Tensor

    @property
    def token_probs(self) -> torch.Tensor:
        """``[B, T]`` P(harmful token)."""
        return torch.softmax(self.token_logits.float(), dim=-1)[..., 1]

    @property
    def prefix_probs(self) -> torch.Tensor:
        """``[B, T]`` P(harmful answer | sequence up to t): the streaming scores."""
        return torch.softmax(self.response_logits.float(), dim=-1)[..., 1]

    @property
    def end_logits(self) -> torch.Tensor:
        """``[B, 2]`` the response head at the last real token (the whole-answer verdict)."""
        rows = torch.arange(self.response_logits.shape[0], device=self.response_logits.device)
        return self.response_logits[rows, self.end_index]


class StreamingMonitor(VLMWithHeads):
    """A VLM (LLaVA or Qwen2-VL, optionally peft-wrapped) plus a token head and a response head.

    Args:
        backbone: a ``*ForConditionalGeneration`` VLM (the SFT precursor); its LM head is unused.
        dropout: dropout on the token head's input (SCM: 0.1); off in eval mode.
        seed: initialises the heads reproducibly without touching the caller's RNG.
    """

    def __init__(self, backbone: PreTrainedModel, *, dropout: float = 0.1, seed: int = 0):
        super().__init__(backbone)
        self.token_head, self.response_head = self.new_heads([2, 2], seed=seed)
        self.token_dropout = nn.Dropout(dropout)

    def heads(self) -> tuple[nn.Linear, nn.Linear]:
        """The token head and the response head."""
        return self.token_head, self.response_head

    def read(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on hidden states ``[..., H]``: ``(token_logits, response_logits)``, each ``[..., 2]``."""
        return self.token_head(self.token_dropout(hidden)), self.response_head(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs) -> MonitorOutput:
        """Score every position of a batch (any padding side; inputs from :func:`encode_monitor_batch`).

        Args:
            input_ids: ``[B, T]``; attention_mask: ``[B, T]``; vision_inputs: the processor's image tensors.
        """
        hidden = self.hidden_states(input_ids, attention_mask, **vision_inputs)  # [B, T, H]
        token_logits, response_logits = self.read(hidden)
        return MonitorOutput(token_logits, response_logits, last_token_index(attention_mask))


# --------------------------------------------------------------------------- labels and batches


def response_token_labels(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], start: int
) -> list[int]:
    """0/1 token labels from character spans: 1 when a token overlaps a harmful word.

    A token covering characters ``[a, b)`` of the text is harmful when, shifted to the response
    (``a - start``, ``b - start``), it overlaps a span ``[s, e)``: ``a - start < e`` and
    ``b - start > s``. A byte-level token " pills" (space included) overlaps the word "pills".

    Args:
        offsets: the tokens' character offsets into the text that holds the response.
        spans: harmful word spans in *response* coordinates
            (:func:`saferlhfv.data.oracle.harmful_word_spans`).
        start: where the response starts in that text.
    """
    out = []
    for a, b in offsets:
        a, b = a - start, b - start
        out.append(int(any(a < e and b > s for s, e in spans)))
    return out


def _response_start(processor: ProcessorMixin, question: str, response: str, text: str) -> int:
    """Where ``response`` starts in the chat-formatted ``text`` (found by rendering a marker in its place)."""
    marker = "\u2063MONITOR\u2063"
    rendered = render_prompts(processor, [question], [marker])[0]
    i = rendered.find(marker)
    if i >= 0 and rendered[:i] + response + rendered[i + len(marker) :] == text:
        return i
    j = text.rfind(response) if response else -1
    if j < 0:
        raise ValueError(f"cannot locate the response {response!r} in the chat-formatted text")
    return j


def encode_monitor_batch(
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses: Sequence[str],
    harmful_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    labels: Sequence[bool] | None = None,
) -> dict[str, torch.Tensor]:
    """A right-padded batch of (picture, question, answer) with the monitor's labels.

    The response region of a row is its answer's tokens and the chat template's end-of-turn
    tokens after it, up to the last real token. Token labels come from the fast tokenizer's
    offset mapping over the chat-formatted text (:func:`response_token_labels`); the
    processor's sequence differs from the tokenizer's only by the image placeholder expansion
    *before* the answer, so the two are aligned from the end (and checked id by id).

    Args:
        harmful_spans: per row, harmful word spans in the answer (None: no token labels, all 0).
        labels: per row, the answer's label (1 = harmful); default: the row has a harmful span.

    Returns:
        The processor's tensors (``input_ids [B, T]``, ``attention_mask [B, T]``, image tensors) plus
        ``label_tokens [B, T]`` (-100 on prompt and padding, 0/1 on the response region),
        ``response_mask [B, T]`` (1 on the response region) and ``label_response [B]`` (0/1).
    """
    if not (len(images) == len(questions) == len(responses)):
        raise ValueError("encode_monitor_batch needs as many images, questions and responses")
    spans = [[]] * len(responses) if harmful_spans is None else [list(s) for s in harmful_spans]
    if len(spans) != len(responses):
        raise ValueError(f"{len(spans)} span lists for {len(responses)} responses")
    batch = encode_prompts(processor, images, questions, responses, padding_side="right")
    ids = batch["input_ids"]
    B, T = ids.shape
    tokenizer = processor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise NotImplementedError("token labels need a fast tokenizer (offset mapping)")
    texts = render_prompts(processor, questions, responses)
    end = last_token_index(batch["attention_mask"])
    label_tokens = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (text, q, r) in enumerate(zip(texts, questions, responses)):
        start = _response_start(processor, q, r, text)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        offsets = enc["offset_mapping"]
        first = next((j for j, (_, b) in enumerate(offsets) if b > start), len(offsets))
        tail = enc["input_ids"][first:]
        last = int(end[i])
        pos0 = last - len(tail) + 1
        if pos0 < 0 or ids[i, pos0 : last + 1].tolist() != tail:
            raise ValueError(
                f"row {i}: the tokenizer's response tokens do not match the processor's sequence; "
                "the chat template or the tokenizer splits the answer differently in context"
            )
        label_tokens[i, pos0 : last + 1] = torch.tensor(response_token_labels(offsets[first:], spans[i], start))
        response_mask[i, pos0 : last + 1] = 1
    if labels is None:
        labels = [bool(s) for s in spans]
    if len(labels) != B:
        raise ValueError(f"{len(labels)} labels for {B} responses")
    batch["label_tokens"] = label_tokens
    batch["response_mask"] = response_mask
    batch["label_response"] = torch.tensor([int(bool(x)) for x in labels], dtype=torch.long)
    return batch


# --------------------------------------------------------------------------- loss


def monitor_loss(
    out: MonitorOutput,
    token_labels: torch.Tensor,
    response_labels: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    *,
    alpha: float = 0.6,
    gamma: float = 1.0,
    prefixes: bool = False,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SCM's loss ``alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic``.

    * ``CE_token = mean over labelled tokens of -log softmax(token_logits)[label]`` (tokens
      labelled -100, the prompt and padding, are left out);
    * ``CE_response = mean over rows of -log softmax(response_logits[end])[label]``, read at
      each row's last real token ``end``; with ``prefixes``, the mean of that term and of the mean
      over rows of the mean over the row's response positions ``t`` of
      ``-log softmax(response_logits[t])[label]``: every prefix of an answer carries the answer's
      label (the head learns to foresee where the answer is going, so a compliant opening to a
      harmful request already scores high), and the whole-answer verdict keeps its own weight;
    * ``L_logic = mean over rows of -log(max(1 - p + p * g, eps))`` with
      ``p = softmax(response_logits[end])[1]`` and ``g = max over response positions of
      softmax(token_logits)[1]`` (0 for a row without response positions).

    Args:
        out: the monitor's output (``token_logits [B, T, 2]``, ``response_logits [B, T, 2]``, ``end_index [B]``).
        token_labels: ``[B, T]`` 0/1 on response tokens, -100 elsewhere.
        response_labels: ``[B]`` 0/1 (1 = harmful answer).
        response_mask: ``[B, T]`` the positions ``g`` maximises over (default: ``token_labels != -100``).
        alpha, gamma: the weights (SCM: 0.6 and 1; the baseline 0 and 0).
        prefixes: train the response head at every response position (``response_mask``), not
            only at the end.
        eps: floor inside the log of ``L_logic``.

    Returns:
        ``(loss, stats)``: the loss and ``ce_token``, ``ce_response``, ``logic``, ``response_acc``
        (end verdict at 0.5), ``token_acc`` (labelled tokens at 0.5), as floats.
    """
    token_logits = out.token_logits.float()
    labelled = token_labels != IGNORE_INDEX
    if token_logits.shape[:2] != token_labels.shape:
        raise ValueError(
            f"token_logits {tuple(token_logits.shape)} do not match token_labels {tuple(token_labels.shape)}"
        )
    if labelled.any():
        ce_token = F.cross_entropy(token_logits[labelled], token_labels[labelled])
    else:
        ce_token = token_logits.sum() * 0.0
    end_logits = out.end_logits.float()
    target = response_labels.long()
    mask = labelled if response_mask is None else response_mask.bool()
    if prefixes:
        per_position = F.cross_entropy(
            out.response_logits.float().transpose(1, 2), target[:, None].expand_as(mask), reduction="none"
        )  # [B, T]
        prefix_ce = ((per_position * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
        ce_response = (F.cross_entropy(end_logits, target) + prefix_ce) / 2
    else:
        ce_response = F.cross_entropy(end_logits, target)
    p = torch.softmax(end_logits, dim=-1)[:, 1]  # [B]
    q = torch.softmax(token_logits, dim=-1)[..., 1].masked_fill(~mask, 0.0)  # [B, T]
    g = q.max(dim=1).values  # [B]
    logic = -torch.log((1 - p + p * g).clamp(min=eps)).mean()
    loss = alpha * ce_token + (1 - alpha) * ce_response + gamma * logic
    with torch.no_grad():
        response_acc = ((p > 0.5).long() == target).float().mean()
        token_acc = ((token_logits[labelled].argmax(-1) == token_labels[labelled]).float().mean()
                     if labelled.any() else torch.tensor(float("nan")))  # fmt: skip
    stats = {
        "ce_token": float(ce_token.detach()),
        "ce_response": float(ce_response.detach()),
        "logic": float(logic.detach()),
        "response_acc": float(response_acc),
        "token_acc": float(token_acc),
    }
    return loss, stats


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_answers(
    monitor: StreamingMonitor,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The streaming scores of whole answers, from one forward pass per batch.

    Returns:
        ``(scores, mask)``, both ``[N, R]`` with ``R`` the longest response region: row ``i``
        holds ``P(harmful | answer up to t)`` at each of its response positions (the answer's
        tokens, then its end-of-turn token), left-aligned, and 0 / mask 0 after. The last masked
        score of a row is the whole-answer verdict (the response head at the last real token).
    """
    was_training = monitor.training
    monitor.eval()
    device = next(monitor.parameters()).device
    rows: list[torch.Tensor] = []
    try:
        for s in range(0, len(questions), batch_size):
            batch = encode_monitor_batch(
                processor, list(images[s : s + batch_size]), list(questions[s : s + batch_size]),
                list(responses[s : s + batch_size]),
            )  # fmt: skip
            mask = batch.pop("response_mask").bool()
            for key in LABEL_KEYS:
                batch.pop(key, None)
            probs = monitor(**{k: v.to(device) for k, v in batch.items()}).prefix_probs.cpu()
            rows += [probs[i][mask[i]] for i in range(len(probs))]
    finally:
        monitor.train(was_training)
    return pad_scores(rows)


def first_harmful_token(label_tokens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the response position (0 = first response token) of the first token labelled harmful.

    Args:
        label_tokens: ``[B, T]`` from :func:`encode_monitor_batch` (1 = harmful word, -100 outside the response).
        response_mask: ``[B, T]`` its response region.

    Returns:
        ``[B]`` long: positions counted over the response region only (as :func:`score_answers`'s
        columns), -1 for a row without a harmful token.
    """
    m = response_mask.bool()
    hit = (label_tokens == 1) & m
    pos = m.long().cumsum(dim=1) - 1  # response position of each token
    first = torch.where(hit, pos, torch.full_like(pos, torch.iinfo(torch.long).max)).min(dim=1).values
    return torch.where(hit.any(dim=1), first, torch.full_like(first, -1))


# --------------------------------------------------------------------------- save / load


def save_monitor(model: StreamingMonitor, processor: ProcessorMixin, path: str | Path) -> Path:
    """Save backbone (LoRA merged in, if any) + processor + both heads into ``path`` atomically (safetensors)."""
    path = Path(path)
    heads = {}
    for name, head in zip(("token", "response"), model.heads()):
        for k, v in head.state_dict().items():
            heads[f"{name}.{k}"] = v.detach().contiguous()
    with atomic_directory(path) as tmp:
        save_vlm(model.backbone, processor, tmp / "backbone")
        save_file(heads, tmp / HEADS_FILE)
        (tmp / MONITOR_CONFIG).write_text(json.dumps({"kind": "streaming_monitor", "dropout": model.token_dropout.p}))
    return path


def load_monitor(path: str | Path, *, dtype: str = "float32") -> tuple[StreamingMonitor, ProcessorMixin]:
    """Load what :func:`save_monitor` wrote (in eval mode)."""
    path = Path(path)
    if not (path / MONITOR_CONFIG).is_file():
        raise FileNotFoundError(f"no saved streaming monitor in {path} ({MONITOR_CONFIG} missing)")
    meta = json.loads((path / MONITOR_CONFIG).read_text())
    backbone, processor = load_saved_vlm(path / "backbone", dtype=dtype)
    model = StreamingMonitor(backbone, dropout=meta.get("dropout", 0.1))
    state = load_file(path / HEADS_FILE)
    for name, head in zip(("token", "response"), model.heads()):
        head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")})
    return model.eval(), processor
