"""The SFT stage: train the *precursor* policy on the mini world's SFT mixture.

With ``sft.vision_steps`` set (the tiny preset does), the tiny model's vision
tower and projector are first pretrained to name the object in a picture
(:func:`pretrain_vision`), standing in for the pretrained encoder a real VLM
starts from: in the mixture only a few tokens of each answer depend on the
picture, too weak a signal to teach a random vision tower to see. With
``sft.caption_steps`` set, a vision-language alignment stage on captions comes
next (LLaVA's stage 1; off in the tiny preset, where 600 caption-only steps left
the caption accuracy where it was).

The mixture (``saferlhfv.data.world.sft_dataset``) holds every behaviour type
(detailed and brief compliance, refusals with and without explanation,
off-topic answers, and captions that name what the picture shows) and, like
the precursors the paper aligns, often complies with harmful requests. The
loss is next-token cross-entropy on the response tokens only.

After training, the stage answers the held-out evaluation prompts and the
oracle judges the answers: how often the precursor is unsafe on harmful
prompts is the starting point every later stage improves on. Those answers are
saved (``precursor_samples.json``) for RM-V / CM-V to score out of their
training distribution.

With ``model.lora.enabled`` a pretrained family trains a LoRA adapter, saved merged into the
precursor (a plain model: the PPO reference and the base of every later adapter). The tiny
family has no pretrained weights, so its SFT always trains every weight.

``python -m saferlhfv.run sft --preset tiny [--out DIR]``
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config
from saferlhfv.io import write_json_atomic
from saferlhfv.models.collate import sft_batch
from saferlhfv.models.factory import load_saved_vlm, load_vlm, save_vlm
from saferlhfv.train.loop import Trainer

__all__ = ["train_sft", "load_precursor", "sft_collate", "ObjectProbe", "train_object_probe", "pretrain_vision"]

PRECURSOR_SAMPLES = "precursor_samples.json"


def sft_collate(processor):
    """Collate function: dataset rows (``image``, ``question``, ``response``) -> labelled batch."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return sft_batch(
            processor, [r["image"] for r in rows], [r["question"] for r in rows], [r["response"] for r in rows]
        )

    return collate


def _lm_loss(model, batch):
    return model(**batch).loss, {}


class ObjectProbe(torch.nn.Module):
    """A LLaVA-style VLM's vision tower and projector plus a linear head naming the object in a picture.

    ``forward(pixel_values [B, 3, S, S]) -> logits [B, n_objects]``: the head reads the mean of the
    projected image tokens, i.e. exactly the vectors the language model receives. Only the vision
    tower, the projector and the head get gradients.
    """

    def __init__(self, model: torch.nn.Module, n_objects: int, *, seed: int = 0):
        super().__init__()
        core = getattr(model, "model", model)
        if not hasattr(core, "multi_modal_projector"):
            raise ValueError(f"vision pretraining needs a LLaVA-architecture model, got {type(model).__name__}")
        self.core = core
        hidden = getattr(model.config, "text_config", model.config).hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = torch.nn.Linear(hidden, n_objects)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack(list(self.core.get_image_features(pixel_values=pixel_values).pooler_output))
        return self.head(tokens.mean(dim=1))  # [B, N, H] -> [B, n_objects]


def train_object_probe(
    model,
    processor,
    train,
    held_out,
    cfg,
    out_dir: Path,
    *,
    desc: str,
    metric: str = "accuracy",
    seed: int = 0,
    resume: bool = True,
) -> dict[str, Any]:
    """Train a VLM's vision tower and projector to name the object of each picture (:class:`ObjectProbe`).

    Args:
        model, processor: a LLaVA-architecture VLM and its processor; only the vision tower and the
            projector change (the probe's head is dropped afterwards).
        train, held_out: datasets (or lists of rows) with ``image`` (a picture) and ``context`` (JSON with the
            ``object`` shown or written in the picture) columns.
        cfg: a :class:`~saferlhfv.config.TrainConfig` (learning rate, batch size, ``max_steps``,
            ``eval_every``).
        out_dir: the trainer's folder (checkpoint, ``metrics.jsonl``: the held-out accuracy logged
            every ``eval_every`` steps under the key ``metric``, ``split: eval``).

    Returns:
        ``steps`` and ``metric``: the head's accuracy on ``held_out``.
    """
    import json

    from saferlhfv.data.content import OBJECTS

    names = sorted(OBJECTS)
    probe = ObjectProbe(model, len(names), seed=seed)

    def encode(rows, chunk: int = 256) -> torch.utils.data.TensorDataset:
        """Every picture through the image processor once (not once per epoch): ``[N, 3, S, S]`` and ``[N]``."""
        pixels, labels = [], []
        for start in range(0, len(rows), chunk):
            part = [rows[i] for i in range(start, min(start + chunk, len(rows)))]
            pixels.append(processor.image_processor([r["image"] for r in part], return_tensors="pt")["pixel_values"])
            labels += [names.index(json.loads(r["context"])["object"]) for r in part]
        return torch.utils.data.TensorDataset(torch.cat(pixels), torch.tensor(labels))

    def collate(items):
        return {"pixel_values": torch.stack([x for x, _ in items]), "labels": torch.stack([y for _, y in items])}

    def loss_fn(m, batch):
        logits = m(batch["pixel_values"])
        return torch.nn.functional.cross_entropy(logits, batch["labels"]), {}

    held_out_pixels, held_out_labels = encode(held_out).tensors

    @torch.no_grad()
    def accuracy(m) -> dict[str, float]:
        device = next(m.parameters()).device
        hits = m(held_out_pixels.to(device)).argmax(-1).cpu() == held_out_labels
        return {metric: round(hits.float().mean().item(), 4)}

    trainer = Trainer(model=probe, dataset=encode(train), collate_fn=collate, loss_fn=loss_fn, cfg=cfg,
                      out_dir=out_dir, eval_fn=accuracy, desc=desc, seed=seed)  # fmt: skip
    result = trainer.train(resume=resume)
    return {"steps": result["steps"], **result["eval"]}


def pretrain_vision(model, processor, cfg: Config, out_dir: Path, *, resume: bool = True) -> dict[str, float]:
    """A first step for the tiny family: teach the vision tower and projector to tell the world's objects apart.

    A real VLM starts from a pretrained vision encoder; the tiny one starts from random weights,
    and captions teach it to see only slowly (one object word per answer). This stage stands in
    for that pretraining: ``sft.vision_steps`` optimiser steps of cross-entropy on the object of
    ``sft.caption_examples`` pictures (:func:`train_object_probe`), then the head is dropped.

    The held-out accuracy is also logged ten times during training (``split: eval`` lines of
    ``metrics.jsonl``: the curve of object accuracy over steps that notebook 02 draws).

    Returns:
        ``vision_steps`` and ``vision_accuracy``: the head's accuracy on 200 held-out pictures.
    """
    from saferlhfv.data.world import caption_dataset

    n = cfg.sft.caption_examples
    pictures = caption_dataset(cfg.data, n + 200)
    stage_cfg = dataclasses.replace(
        cfg.sft, max_steps=cfg.sft.vision_steps, eval_every=max(1, cfg.sft.vision_steps // 10)
    )
    result = train_object_probe(model, processor, pictures.select(range(n)), pictures.select(range(n, n + 200)),
                                stage_cfg, out_dir, desc="sft: vision", metric="vision_accuracy", seed=cfg.seed,
                                resume=resume)  # fmt: skip
    return {"vision_steps": result["steps"], "vision_accuracy": result["vision_accuracy"]}


#: share of the SFT mixture held out for the eval loss (never trained on)
SFT_HELD_OUT = 0.05


def sft_split(cfg: Config):
    """The SFT mixture (:func:`saferlhfv.data.world.sft_dataset`) split into ``train`` and the held-out
    ``test`` share :data:`SFT_HELD_OUT` (seeded by ``cfg.seed``): a ``datasets.DatasetDict``."""
    from saferlhfv.data.world import sft_dataset

    return sft_dataset(cfg.data).train_test_split(test_size=SFT_HELD_OUT, seed=cfg.seed)


def train_sft(cfg: Config, out_dir: str | Path, *, resume: bool = True) -> dict[str, Any]:
    """Train the precursor into ``out_dir/model`` and judge its answers; returns metrics.

    Returns:
        ``steps``, ``train_loss``, ``eval_loss`` (held-out SFT examples), the policy
        evaluation of :func:`saferlhfv.evaluate.evaluate_policy` on the evaluation prompts
        under ``policy``, and ``seconds``.
    """
    from saferlhfv.data.world import caption_dataset, rl_prompts, text_corpus
    from saferlhfv.evaluate import evaluate_policy

    start = time.perf_counter()
    out_dir = Path(out_dir)
    corpus = text_corpus(cfg.data) if cfg.model.family == "tiny" else None
    model_cfg = cfg.model
    if model_cfg.family == "tiny" and model_cfg.lora.enabled:
        # LoRA adapts pretrained weights; the tiny model starts from random ones, so its SFT (which is
        # also its pretraining) trains every weight. Later stages put their adapters on this precursor.
        model_cfg = dataclasses.replace(model_cfg, lora=dataclasses.replace(model_cfg.lora, enabled=False))
    model, processor = load_vlm(model_cfg, corpus, seed=cfg.seed)
    data = sft_split(cfg)
    collate = sft_collate(processor)
    held_out = collate([data["test"][i] for i in range(min(64, len(data["test"])))])

    def eval_fn(m):
        batch = held_out.to(next(m.parameters()).device)
        return {"eval_loss": float(m(**batch).loss)}

    vision = {}
    if cfg.sft.vision_steps:
        vision = pretrain_vision(model, processor, cfg, out_dir / "vision", resume=resume)
    if cfg.sft.caption_steps:
        # stage 1: vision-language alignment on captions only (resumable on its own)
        align_cfg = dataclasses.replace(cfg.sft, max_steps=cfg.sft.caption_steps, eval_every=0)
        aligner = Trainer(
            model=model,
            dataset=caption_dataset(cfg.data, cfg.sft.caption_examples),
            collate_fn=collate,
            loss_fn=_lm_loss,
            cfg=align_cfg,
            out_dir=out_dir / "align",
            desc="sft: align",
            seed=cfg.seed,
        )
        aligner.train(resume=resume)
        model = aligner.accelerator.unwrap_model(aligner.model)
    trainer = Trainer(
        model=model,
        dataset=data["train"],
        collate_fn=collate,
        loss_fn=_lm_loss,
        cfg=cfg.sft,
        out_dir=out_dir,
        eval_fn=eval_fn,
        desc="sft",
        seed=cfg.seed,
    )
    result = trainer.train(resume=resume)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.accelerator.is_main_process:
        save_vlm(policy, processor, out_dir / "model")
    evaluation, samples = evaluate_policy(
        policy,
        processor,
        rl_prompts(cfg.data, "evaluation"),
        max_new_tokens=cfg.data.max_response_tokens,
        seed=cfg.seed,
        return_samples=True,
    )
    write_json_atomic(out_dir / PRECURSOR_SAMPLES, samples)
    return {
        "steps": result["steps"],
        "train_loss": round(result["train_loss"], 4),
        "eval_loss": round(result["eval"]["eval_loss"], 4),
        "policy": evaluation,
        **vision,
        "seconds": round(time.perf_counter() - start, 2),
    }


def load_precursor(folder: str | Path):
    """``(model, processor)`` of a trained SFT artifact folder."""
    return load_saved_vlm(Path(folder) / "model")
