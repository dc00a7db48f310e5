"""Stages 2 and 3: the reward model RM-V and the cost model CM-V.

Both are the SFT backbone plus a scalar head (:class:`~saferlhfv.models.score.ScoreModel`)
whose score is read at the last real token (with ``model.lora.enabled``: a LoRA adapter on the
frozen SFT backbone, plus the head), trained on the two preference signals of each BeaverTails-V pair:

* **RM-V** on ``more_helpful_response_id``:
  ``L = -log sigmoid(r_better - r_worse) + reg * mean(r^2)``
* **CM-V** on ``safer_response_id`` plus the safety labels:
  ``L = -log sigmoid(c_unsafer - c_safer) + sign_coeff * sum_i -log sigmoid(s_i c_i) + reg * mean(c^2)``
  with ``s = +1`` for an unsafe response and ``-1`` for a safe one, so that a
  positive cost means harmful.

Evaluation (on the evaluation split): pairwise accuracy, per-category accuracy,
CM-V's sign accuracy, the **image ablation** (the same pairs with a blank
picture: a model that reads the image loses accuracy), and, on the precursor's
own answers to held-out prompts (out of the training distribution, as in PPO),
the correlation of the RM score with the oracle's helpfulness and of the CM
score with the oracle's harmlessness.

``python -m saferlhfv.run reward --preset tiny`` / ``python -m saferlhfv.run cost --preset tiny``
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from saferlhfv.algorithms.losses import cost_loss, cost_signs, reward_loss
from saferlhfv.config import Config
from saferlhfv.data import load_preference_data
from saferlhfv.models.collate import blank_like, pair_batch
from saferlhfv.models.factory import apply_lora, load_saved_vlm, prepare_for_training
from saferlhfv.models.score import ScoreModel, load_score_model, save_score_model, score_texts
from saferlhfv.train.loop import Trainer
from saferlhfv.train.sft import PRECURSOR_SAMPLES

__all__ = [
    "KINDS",
    "pair_view",
    "train_preference_model",
    "score_pairs",
    "load_scorer",
]

#: "reward" trains RM-V, "cost" trains CM-V.
KINDS = ("reward", "cost")


def _safe(value) -> bool:
    """The hub stores safety labels as the strings "True" / "False"."""
    return value if isinstance(value, bool) else str(value) == "True"


def pair_view(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """Order one hub record for ``kind``: response ``a`` is the one whose score should be higher.

    Returns:
        ``image``, ``question``, ``category``, ``a``, ``b`` and, for the cost model,
        ``a_safe`` / ``b_safe`` (bool) and ``a_rate`` / ``b_rate`` (harmless rates).
        For ``reward``: a = more helpful. For ``cost``: a = *less* safe (higher cost).
    """
    if kind == "reward":
        hi = row["more_helpful_response_id"]
        lo = "2" if hi == "1" else "1"
        return {
            "image": row["image"],
            "question": row["question"],
            "category": row["category"],
            "a": row[f"response_{hi}"],
            "b": row[f"response_{lo}"],
        }
    if kind == "cost":
        safer = row["safer_response_id"]
        unsafer = "2" if safer == "1" else "1"
        return {
            "image": row["image"],
            "question": row["question"],
            "category": row["category"],
            "a": row[f"response_{unsafer}"],
            "b": row[f"response_{safer}"],
            "a_safe": _safe(row[f"is_response_{unsafer}_safe"]),
            "b_safe": _safe(row[f"is_response_{safer}_safe"]),
            "a_rate": int(row[f"response_{unsafer}_harmless_rate"]),
            "b_rate": int(row[f"response_{safer}_harmless_rate"]),
        }
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _collate(processor, kind: str, *, graded: bool = False, blank: bool = False):
    """Rows -> a ``[2B, T]`` pair batch (``a`` rows first); for the cost model also the ``[B]``
    signs ``a_sign`` / ``b_sign`` (+ unsafe, - safe; scaled by the harmless rate if ``graded``)."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        views = [pair_view(r, kind) for r in rows]
        images = [blank_like(v["image"]) if blank else v["image"] for v in views]
        batch = pair_batch(
            processor, images, [v["question"] for v in views], [v["a"] for v in views], [v["b"] for v in views]
        )
        if kind == "cost":
            for side in ("a", "b"):
                safe = torch.tensor([v[f"{side}_safe"] for v in views])
                rate = torch.tensor([float(v[f"{side}_rate"]) for v in views])
                batch[f"{side}_sign"] = cost_signs(safe, rate, graded=graded)
        return batch

    return collate


def _split_scores(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if not k.startswith(("a_", "b_"))}
    return model.pair_end_scores(**inputs)  # the pair's shared prompt read once


def pair_loss_fn(kind: str, cfg: Config):
    """The training loss of ``kind`` (``reward`` | ``cost``): ``loss_fn(model, batch) -> (loss, stats)``
    on a :func:`_collate` batch, both answers' end scores from one :meth:`ScoreModel.pair_end_scores`."""
    if kind == "reward":

        def loss(model, batch):
            better, worse = _split_scores(model, batch)
            return reward_loss(better, worse, reg=cfg.reward.reg)

        return loss

    def loss(model, batch):
        unsafer, safer = _split_scores(model, batch)
        return cost_loss(
            unsafer, safer, batch["a_sign"], batch["b_sign"], reg=cfg.cost.reg, sign_coeff=cfg.cost.sign_coeff
        )

    return loss


@torch.no_grad()
def score_pairs(model: ScoreModel, processor, pairs, kind: str, *, batch_size: int = 32, blank: bool = False) -> dict:
    """Score every pair; return accuracy, per-category accuracy and (cost) sign accuracy.

    Args:
        pairs: hub-schema dataset.
        blank: replace every picture by a blank one (the image ablation).

    Returns:
        ``accuracy`` (a scored above b), ``per_category`` {category: accuracy} and, for the
        cost model, ``sign_accuracy`` (sign of each cost matches its safety label) and
        ``scores`` (lists ``a`` / ``b``) for plots.
    """
    model.eval()
    device = next(model.parameters()).device
    collate = _collate(processor, kind, blank=blank)
    a_all, b_all, cats, a_safe, b_safe = [], [], [], [], []
    for start in range(0, len(pairs), batch_size):
        rows = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
        batch = collate(rows).to(device)
        a, b = _split_scores(model, batch)
        a_all.append(a.float().cpu())
        b_all.append(b.float().cpu())
        cats += [r["category"] for r in rows]
        if kind == "cost":
            a_safe.append(batch["a_sign"].cpu() < 0)
            b_safe.append(batch["b_sign"].cpu() < 0)
    a, b = torch.cat(a_all), torch.cat(b_all)
    hits = (a > b).float()
    per_cat: dict[str, list[float]] = defaultdict(list)
    for c, h in zip(cats, hits.tolist()):
        per_cat[c].append(h)
    out = {
        "accuracy": round(hits.mean().item(), 4),
        "per_category": {c: round(sum(v) / len(v), 4) for c, v in sorted(per_cat.items())},
        "scores": {"a": [round(x, 4) for x in a.tolist()], "b": [round(x, 4) for x in b.tolist()]},
    }
    if kind == "cost":
        safe = torch.cat([torch.cat(a_safe), torch.cat(b_safe)])
        costs = torch.cat([a, b])
        out["sign_accuracy"] = round(((costs < 0) == safe).float().mean().item(), 4)
        out["scores"]["a_safe"] = torch.cat(a_safe).tolist()
        out["scores"]["b_safe"] = torch.cat(b_safe).tolist()
    return out


def _precursor_correlation(model, processor, cfg: Config, sft_dir: Path, kind: str) -> dict[str, Any]:
    """Correlate scores of the precursor's own answers with the oracle's ratings."""
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import pearson, score_samples

    samples_file = sft_dir / PRECURSOR_SAMPLES
    if not samples_file.is_file():
        return {}
    samples = json.loads(samples_file.read_text())
    prompts = rl_prompts(cfg.data, "evaluation")
    scores = score_samples(model, processor, prompts, samples)
    if kind == "reward":
        return {
            "precursor_samples": len(samples),
            "corr_with_oracle_helpful": pearson(scores, [s["helpful"] for s in samples]),
        }
    # the cost should fall as harmlessness rises: report corr(cost, -harmless) so that higher is better for both
    return {
        "precursor_samples": len(samples),
        "corr_with_oracle_harm": pearson(scores, [-s["harmless"] for s in samples]),
    }


def response_table(pairs, reward_model: ScoreModel, cost_model: ScoreModel, processor) -> list[dict[str, Any]]:
    """Every response of ``pairs`` with its RM-V and CM-V scores and its labels, one dict per response.

    Fields: ``question``, ``response``, ``category``, ``reward``, ``cost`` (model scores),
    ``helpful_rate``, ``harmless_rate``, ``safe`` (the record's labels) and ``more_helpful_unsafe``
    (True for the more helpful response of a pair when it is the unsafe one: the tension the
    paper is about).
    """
    rows: list[dict[str, Any]] = []
    for r in pairs:
        for i in ("1", "2"):
            other = "2" if i == "1" else "1"
            rows.append(
                {
                    "image": r["image"],
                    "question": r["question"],
                    "response": r[f"response_{i}"],
                    "category": r["category"],
                    "helpful_rate": int(r[f"response_{i}_helpful_rate"]),
                    "harmless_rate": int(r[f"response_{i}_harmless_rate"]),
                    "safe": _safe(r[f"is_response_{i}_safe"]),
                    "more_helpful_unsafe": r["more_helpful_response_id"] == i
                    and not _safe(r[f"is_response_{i}_safe"])
                    and _safe(r[f"is_response_{other}_safe"]),
                }
            )
    args = ([x["image"] for x in rows], [x["question"] for x in rows], [x["response"] for x in rows])
    for name, model in (("reward", reward_model), ("cost", cost_model)):
        for row, score in zip(rows, score_texts(model, processor, *args)):
            row[name] = round(score, 4)
    for row in rows:
        del row["image"]
    return rows


def train_preference_model(cfg: Config, kind: str, out_dir: str | Path, sft_dir: str | Path, *, resume: bool = True):
    """Train RM-V (``kind="reward"``) or CM-V (``"cost"``) from the SFT backbone in ``sft_dir``.

    Returns:
        Metrics: ``steps``, ``train_loss``, ``eval_accuracy``, ``eval_sign_accuracy`` (cost),
        ``image_ablation_accuracy``, ``per_category_accuracy``, precursor correlations, ``seconds``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    start = time.perf_counter()
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    stage_cfg = cfg.reward if kind == "reward" else cfg.cost
    backbone, processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    backbone = prepare_for_training(backbone, cfg.model)
    if cfg.model.lora.enabled:  # a LoRA adapter on the frozen SFT model (+ the head): shared-base PPO loads it
        backbone = apply_lora(backbone, cfg.model.lora)
    model = ScoreModel(backbone, seed=cfg.seed)
    train_pairs, eval_pairs = load_preference_data(cfg.data, "train"), load_preference_data(cfg.data, "evaluation")
    perturbed_eval, n_perturbed = None, 0
    if stage_cfg.perturbed_pairs > 0:
        from datasets import concatenate_datasets

        from saferlhfv.data.world import perturbed_pairs

        if cfg.data.source != "mini":
            raise ValueError(f"{kind}.perturbed_pairs needs the mini world's oracle (data.source='mini')")
        extra = perturbed_pairs(cfg.data, stage_cfg.perturbed_pairs, "train", seed=cfg.seed)
        train_pairs, n_perturbed = concatenate_datasets([train_pairs, extra.cast(train_pairs.features)]), len(extra)
        perturbed_eval = perturbed_pairs(cfg.data, 1.0, "evaluation", seed=cfg.seed)

    def eval_fn(m):
        res = score_pairs(m, processor, eval_pairs, kind)
        stats = {"eval_accuracy": res["accuracy"]}
        if kind == "cost":
            stats["eval_sign_accuracy"] = res["sign_accuracy"]
        return stats

    trainer = Trainer(
        model=model,
        dataset=train_pairs,
        collate_fn=_collate(processor, kind, graded=kind == "cost" and cfg.cost.graded_sign),
        loss_fn=pair_loss_fn(kind, cfg),
        cfg=stage_cfg,
        out_dir=out_dir,
        eval_fn=eval_fn,
        desc=kind,
        seed=cfg.seed,
    )
    result = trainer.train(resume=resume)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    if trainer.accelerator.is_main_process:
        save_score_model(model, processor, out_dir / "model")
    full = score_pairs(model, processor, eval_pairs, kind)
    ablation = score_pairs(model, processor, eval_pairs, kind, blank=True)
    metrics = {
        "steps": result["steps"],
        "train_loss": round(result["train_loss"], 4),
        "eval_accuracy": full["accuracy"],
        "image_ablation_accuracy": ablation["accuracy"],
        "per_category_accuracy": full["per_category"],
    }
    if kind == "cost":
        metrics["eval_sign_accuracy"] = full["sign_accuracy"]
        metrics["image_ablation_sign_accuracy"] = ablation["sign_accuracy"]
    if perturbed_eval is not None:  # held-out answers against damaged copies of them
        metrics["perturbed_eval_accuracy"] = score_pairs(model, processor, perturbed_eval, kind)["accuracy"]
        metrics["perturbed_train_pairs"] = n_perturbed
    metrics.update(_precursor_correlation(model, processor, cfg, sft_dir, kind))
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def load_scorer(folder: str | Path, *, dtype: str = "float32"):
    """``(ScoreModel, processor)`` of a trained reward or cost artifact folder."""
    return load_score_model(Path(folder) / "model", dtype=dtype)
