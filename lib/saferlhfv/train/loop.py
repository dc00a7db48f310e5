"""The one supervised training loop behind SFT, RM-V, CM-V and the guard.

Built on ``accelerate``, so the same code runs on a CPU, one GPU or many
(``accelerate launch``). Each stage supplies a model, a dataset, a collate
function and a loss function; the loop does the rest:

* AdamW over trainable parameters, linear warm-up then cosine decay;
* a seeded, per-epoch shuffle (so a resumed run sees exactly the batches an
  uninterrupted one would), optionally grouped by length (:func:`length_grouped_order`: rows of
  similar length share a batch, so little of each batch is padding);
* a progress bar, metrics as JSON lines (``metrics.jsonl``), periodic evaluation;
* checkpoints every ``save_every`` steps through a temporary folder renamed into
  place (``checkpoint/``: model, optimizer, scheduler and RNG states through
  ``accelerator.save_state`` plus ``trainer_state.json``), from which
  :meth:`Trainer.train` resumes by default.

Pseudocode::

    for epoch in epochs:
        for batch in shuffled(dataset, seed + epoch)[skip already-done batches]:
            loss, stats = loss_fn(model, batch)
            stop on a non-finite loss (saferlhfv.finite: the checkpoint on disk stays the last good one)
            backward; clip grad norm; optimizer step; scheduler step
            log; every eval_every: eval_fn(model); every save_every: checkpoint
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from saferlhfv import faults
from saferlhfv.config import TrainConfig
from saferlhfv.finite import check_finite
from saferlhfv.io import append_metrics, read_metrics, truncate_metrics
from saferlhfv.threads import busy, rebalance

__all__ = [
    "TrainState",
    "Trainer",
    "length_grouped_order",
    "LossFn",
    "EvalFn",
    "make_accelerator",
    "save_checkpoint",
    "load_checkpoint",
]

#: loss_fn(model, batch) -> (scalar loss, {name: float}) for logging.
LossFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]
#: eval_fn(model) -> {name: float}.
EvalFn = Callable[[torch.nn.Module], dict[str, float]]

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
#: batches per length-sorted window of :func:`length_grouped_order` (Hugging Face's LengthGroupedSampler: 50).
GROUP_WINDOW_BATCHES = 50


def length_grouped_order(
    lengths: list[int], *, batch_size: int, generator: torch.Generator, window_batches: int = GROUP_WINDOW_BATCHES
) -> list[int]:
    """A shuffled order of ``range(len(lengths))`` whose consecutive ``batch_size`` rows have similar lengths.

    A random permutation is cut into windows of ``window_batches * batch_size`` rows; each window is
    sorted by length (longest first) and cut into batches; then the order of all the batches is
    shuffled. Every row appears once per epoch, batches stay random in content beyond their length,
    and a batch is padded to a length its rows nearly share instead of to the longest row of the
    data. The same ``generator`` state gives the same order (resumable).

    Args:
        lengths: one length per row (tokens, or any proxy that orders rows by their padded size).
        batch_size: rows per batch; the last batch may be short and stays last.
        generator: seeded torch generator (consumed: two draws).

    Returns:
        The row order, a permutation of ``range(len(lengths))``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = max(1, window_batches) * batch_size
    batches = []
    for start in range(0, len(order), window):
        rows = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [rows[b : b + batch_size] for b in range(0, len(rows), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]  # the last window's last batch, if any: stays last
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [i for b in shuffled + short for i in b]


def make_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` that also forms a process group on GPU-less machines.

    Launched by ``torchrun`` / ``accelerate launch`` on CPUs only, accelerate needs ``cpu=True``
    to use gloo processes; without it each process would train alone.
    """
    # some weights take no part in a loss (a score model's unused LM head, the vision tower's final
    # norm when features come from its last hidden state): DDP must be told to expect that
    handlers = kwargs.pop("kwargs_handlers", []) + [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=handlers, **kwargs)


def save_checkpoint(accelerator: Accelerator, out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Save everything ``accelerator`` prepared (models, optimizers, schedulers, RNG) plus ``state``.

    Every process must call it. The files go to a temporary folder that the main
    process renames to ``out_dir/checkpoint`` once complete, so a crash mid-save leaves
    the previous checkpoint intact.

    Args:
        state: JSON-serialisable loop state (step, epoch, a Lagrange multiplier, ...).
    """
    out_dir = Path(out_dir)
    final = out_dir / CHECKPOINT
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()  # every rank writes its own RNG state into tmp
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # ... and has finished before the folder is renamed
    if accelerator.is_main_process:
        faults.reached("checkpoint:tmp")
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        old = out_dir / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed after its last swap
        if final.exists():
            os.replace(final, old)
            faults.reached("checkpoint:old")
        os.replace(tmp, final)
        faults.reached("checkpoint:swapped")
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, out_dir: str | Path) -> dict[str, Any] | None:
    """Restore what :func:`save_checkpoint` wrote into the prepared objects; return its state (None if absent).

    A run killed between moving the previous checkpoint aside and putting the new one in place left
    only ``.checkpoint.old``: it is the last complete checkpoint, and is put back first.
    """
    final = Path(out_dir) / CHECKPOINT
    old = Path(out_dir) / f".{CHECKPOINT}.old"
    if accelerator.is_main_process and not final.exists() and (old / "trainer_state.json").is_file():
        os.replace(old, final)
    accelerator.wait_for_everyone()
    state_file = final / "trainer_state.json"
    if not state_file.is_file():
        return None
    accelerator.load_state(str(final))
    return json.loads(state_file.read_text())


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    #: optimiser steps already taken in the current epoch.
    step_in_epoch: int = 0


class Trainer:
    """Train ``model`` on ``dataset`` with ``loss_fn``; see the module docstring.

    Args:
        model: any ``nn.Module`` (a VLM, a :class:`~saferlhfv.models.score.ScoreModel`, ...).
        dataset: indexable dataset (``datasets.Dataset`` or list); items go to ``collate_fn``.
        collate_fn: list of items -> batch dict of tensors.
        loss_fn: ``(model, batch) -> (loss, stats)``.
        cfg: optimisation settings (learning rate, epochs or max_steps, batch size, ...).
        out_dir: where ``checkpoint/`` and ``metrics.jsonl`` go.
        eval_fn: ``model -> metrics`` run every ``cfg.eval_every`` steps and at the end.
        desc: label of the progress bar.
        accelerator: reuse one (default: a new ``Accelerator`` with ``cfg``'s accumulation).
        seed: fixes the order of the examples in every epoch (a run's ``Config.seed``).
        lengths: one length per example (tokens or a proxy): batches then group examples of similar
            length (:func:`length_grouped_order`); None = plain shuffle.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        dataset,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        loss_fn: LossFn,
        cfg: TrainConfig,
        out_dir: str | Path,
        eval_fn: EvalFn | None = None,
        desc: str = "train",
        accelerator: Accelerator | None = None,
        seed: int = 0,
        lengths: list[int] | None = None,
    ):
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} examples")
        self.lengths = None if lengths is None else list(lengths)
        self.cfg = cfg
        self.seed = seed
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.desc = desc
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator or make_accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        batches = math.ceil(math.ceil(len(dataset) / cfg.batch_size) / self.accelerator.num_processes)
        self.steps_per_epoch = math.ceil(batches / max(1, cfg.gradient_accumulation_steps))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=int(cfg.warmup_ratio * self.total_steps), num_training_steps=self.total_steps
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.state = TrainState()

    # ------------------------------------------------------------------ data

    def _loader(self, epoch: int, skip_steps: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.lengths is None:
            order = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            order = length_grouped_order(self.lengths, batch_size=self.cfg.batch_size, generator=generator)
        loader = DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=order,
            collate_fn=self.collate_fn,
            num_workers=0,
        )
        loader = self.accelerator.prepare(loader)
        skip = skip_steps * self.cfg.gradient_accumulation_steps
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save_checkpoint(self) -> None:
        """Write ``checkpoint/`` atomically: model, optimizer, scheduler, RNG and :class:`TrainState`."""
        save_checkpoint(self.accelerator, self.out_dir, asdict(self.state))

    def _try_resume(self) -> bool:
        state = load_checkpoint(self.accelerator, self.out_dir)
        if state is None:
            return False
        self.state = TrainState(**state)
        self._truncate_metrics(self.state.step)
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines that training from the checkpoint at ``step`` logs again: those after ``step``,
        and, from the final checkpoint, the final evaluation (logged at the last step, before that
        checkpoint, and run again after it)."""
        final = step >= self.total_steps

        def keep(record: dict[str, Any]) -> bool:
            return record["step"] < step or (record["step"] == step and not (final and record["split"] == "eval"))

        if self.accelerator.is_main_process:
            truncate_metrics(self.out_dir / METRICS, keep)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            append_metrics(self.out_dir / METRICS, record)

    def _check_finite(self, name: str, value: Any, step: int | None = None) -> None:
        """Stop with :class:`~saferlhfv.finite.NonFiniteError` on a NaN / inf ``value`` of step ``step``
        (default: the step being taken), naming this stage (``desc``) and the last checkpoint."""
        check_finite(name, value, stage=self.desc, step=self.state.step + 1 if step is None else step,
                     checkpoint=self.checkpoint_dir)  # fmt: skip

    # ------------------------------------------------------------------ training

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` on the unwrapped model in eval mode; log and return its metrics."""
        if self.eval_fn is None:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = self.eval_fn(model)
        model.train(was_training)
        self._log({"step": self.state.step, "split": "eval", **metrics})
        return metrics

    def train(self, *, resume: bool = True) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming from ``checkpoint/`` when allowed).

        Returns:
            ``{"steps", "resumed", "train_loss" (mean over the last epoch's steps), "eval": {...}}``.
        """
        with busy():  # a busy worker: its share of the cores (saferlhfv.threads)
            return self._train(resume=resume)

    def _train(self, *, resume: bool) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self._try_resume()
        if not resumed and acc.is_main_process:
            (self.out_dir / METRICS).unlink(missing_ok=True)
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc=self.desc,
            disable=not acc.is_local_main_process,
            dynamic_ncols=True,
        )
        while self.state.step < self.total_steps:
            loader = self._loader(self.state.epoch, self.state.step_in_epoch)
            for batch in loader:
                rebalance()
                with acc.accumulate(self.model):
                    loss, stats = self.loss_fn(self.model, batch)
                    if acc.num_processes == 1:  # several: checked below on the reduced loss, so all ranks stop
                        self._check_finite("loss", loss)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue
                self.state.step += 1
                self.state.step_in_epoch += 1
                loss_value = float(acc.reduce(loss.detach(), reduction="mean"))
                self._check_finite("loss", loss_value, step=self.state.step)
                self._log(
                    {
                        "step": self.state.step,
                        "epoch": self.state.epoch,
                        "split": "train",
                        "loss": loss_value,
                        "lr": self.scheduler.get_last_lr()[0],
                        **{k: float(v) for k, v in stats.items()},
                    }
                )
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if cfg.eval_every and self.state.step % cfg.eval_every == 0 and self.state.step < self.total_steps:
                    self.evaluate()
                faults.reached("step")
                if cfg.save_every and self.state.step % cfg.save_every == 0 and self.state.step < self.total_steps:
                    self.save_checkpoint()
                if self.state.step >= self.total_steps:
                    break
            else:
                self.state.epoch += 1
                self.state.step_in_epoch = 0
        bar.close()
        final_eval = self.evaluate()
        self.save_checkpoint()
        return {"steps": self.state.step, "resumed": resumed, "train_loss": self._recent_loss(), "eval": final_eval}

    def _recent_loss(self) -> float:
        """Mean train loss over the last epoch's worth of steps, read back from metrics.jsonl."""
        path = self.out_dir / METRICS
        if not path.is_file():
            return float("nan")
        records = read_metrics(path)
        losses = [r["loss"] for r in records if r["split"] == "train"][-self.steps_per_epoch :]
        return sum(losses) / len(losses) if losses else float("nan")
