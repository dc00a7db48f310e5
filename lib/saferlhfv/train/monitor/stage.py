"""The ``monitor`` stage: train the streaming content monitor and its baseline, choose (tau, k), test.

1. **Data** (:func:`~saferlhfv.train.monitor.data.monitor_splits`): train / validation / test
   answers, half harmful, from the world's grammar and (``monitor.policy_share``) the SFT
   precursor, with the oracle's word and answer labels.
2. **Training**: the SFT backbone plus a token head and a response head
   (:class:`~saferlhfv.models.monitor.StreamingMonitor`), with
   ``alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic``
   (:func:`~saferlhfv.models.monitor.monitor_loss`) through the shared loop
   (:class:`~saferlhfv.train.loop.Trainer`). The **baseline** is the same model trained the same
   way with ``alpha = gamma = 0`` (answer labels only).
3. **Evaluation**, for each model: the response head at every response position of the
   validation answers; the rule ``(tau, k)`` of :func:`~saferlhfv.algorithms.streaming.choose_rule`
   (best prefix macro-F1, ties to earlier stops); on the test answers, the whole-answer macro-F1
   (the response head at the last token, threshold 0.5), the prefix macro-F1 under the rule and
   the mean share of a harmful answer's tokens read before it is stopped.
4. **Streaming moderation** (``monitor.streaming_prompts`` > 0): the SFT precursor answers the
   held-out evaluation prompts token by token while the monitor reads along; a stopped answer is
   replaced by the guardrail's refusal (:func:`saferlhfv.streaming_guardrail.measure_streaming`),
   next to the same precursor unmoderated (same seeds). Result key ``streaming``.

``python -m saferlhfv.run monitor --preset tiny`` or ``python -m saferlhfv.train.monitor --preset tiny``
(trains the SFT precursor first if it is not cached).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from saferlhfv.algorithms.streaming import KS, TAUS, choose_rule, macro_f1, rule_metrics
from saferlhfv.config import Config
from saferlhfv.config import replicate_seed as _replicate_seed
from saferlhfv.io import write_json_atomic
from saferlhfv.models.monitor import (
    LABEL_KEYS,
    StreamingMonitor,
    encode_monitor_batch,
    first_harmful_token,
    monitor_loss,
    save_monitor,
    score_answers,
)
from saferlhfv.train.loop import Trainer
from saferlhfv.train.monitor.data import monitor_splits

__all__ = [
    "monitor_collate",
    "evaluate_monitor",
    "first_harmful_positions",
    "streaming_measurement",
    "replicate_seed",
    "train_monitor",
    "TEST_SCORES",
    "STREAMING_ANSWERS",
]

#: per-answer streaming scores of the test split, written beside the stage's result.
TEST_SCORES = "test_scores.json"
#: per-prompt answers of the streaming moderation measurement (both arms), written beside the result.
STREAMING_ANSWERS = "streaming_answers.json"
#: the keys of each model's result.
RESULT_KEYS = ("macro_f1", "prefix_macro_f1", "mean_fraction_seen", "tau", "k")


def replicate_seed(cfg: Config) -> int:
    """The monitor stage's seed: ``1009 * seed + monitor.seed`` (0 for the defaults), as the RL stage's."""
    return _replicate_seed(cfg, "monitor")


def monitor_collate(processor):
    """Rows of :func:`~saferlhfv.train.monitor.data.monitor_splits` -> a batch with token and answer labels."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return encode_monitor_batch(
            processor,
            [r["image"] for r in rows],
            [r["question"] for r in rows],
            [r["response"] for r in rows],
            [[tuple(s) for s in r["harmful_spans"]] for r in rows],
            [r["is_harmful"] for r in rows],
        )

    return collate


def _loss_fn(alpha: float, gamma: float, prefixes: bool):
    def loss(model, batch):
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        return monitor_loss(
            model(**inputs),
            batch["label_tokens"],
            batch["label_response"],
            batch["response_mask"],
            alpha=alpha,
            gamma=gamma,
            prefixes=prefixes,
        )

    return loss


def _load_backbone(cfg: Config, sft_dir: Path):
    from saferlhfv.models.factory import load_backbone

    return load_backbone(sft_dir / "model", cfg.model)


def _scores(model, processor, ds, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores, mask = score_answers(
        model, processor, list(ds["image"]), list(ds["question"]), list(ds["response"]), batch_size=batch_size
    )
    return scores, mask, torch.tensor(list(ds["is_harmful"]))


def first_harmful_positions(processor, ds, *, batch_size: int = 32) -> list[int]:
    """Per answer of a monitor split, the response position of its first harmful-word token (-1: none).

    Positions count the response region as :func:`~saferlhfv.models.monitor.score_answers` does
    (0 = the answer's first token), so they compare directly with the rule's stop positions.
    """
    out: list[int] = []
    collate = monitor_collate(processor)
    for s in range(0, len(ds), batch_size):
        batch = collate(list(ds.select(range(s, min(s + batch_size, len(ds))))))
        out += first_harmful_token(batch["label_tokens"], batch["response_mask"]).tolist()
    return out


def streaming_measurement(
    cfg: Config, monitor, processor, sft_dir: Path, *, tau: float, k: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Streaming moderation of the SFT precursor on the first ``monitor.streaming_prompts`` held-out
    evaluation prompts under the rule ``(tau, k)`` (:func:`saferlhfv.streaming_guardrail.measure_streaming`,
    seed :func:`replicate_seed`, ``data.max_response_tokens`` new tokens).

    Returns:
        ``(result, rows)``: the measurement, and per prompt its ``index``, ``question``, ``context``,
        the ``unmoderated`` answer, what the policy wrote under the monitor (``streamed``), ``stopped``,
        ``stop_index`` and the ``tokens`` of both arms.
    """
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.models.factory import load_saved_vlm
    from saferlhfv.streaming_guardrail import measure_streaming

    prompts = rl_prompts(cfg.data, "evaluation")
    prompts = prompts.select(range(min(cfg.monitor.streaming_prompts, len(prompts))))
    policy, _ = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    policy.to(next(monitor.parameters()).device)
    result, answers = measure_streaming(
        policy, processor, monitor, prompts, tau=tau, k=k, max_new_tokens=cfg.data.max_response_tokens,
        seed=replicate_seed(cfg), return_answers=True,
    )  # fmt: skip
    rows = [
        {"index": i, "question": q, "context": c, "unmoderated": u.generated, "streamed": s.generated,
         "stopped": s.stopped, "stop_index": s.stop_index, "tokens_unmoderated": u.tokens, "tokens_streamed": s.tokens}
        for i, (q, c, u, s) in enumerate(
            zip(prompts["question"], prompts["context"], answers["unmoderated"], answers["streaming"])
        )
    ]  # fmt: skip
    return result, rows


def evaluate_monitor(
    model, processor, validation, test, *, batch_size: int = 32, f1_tolerance: float = 0.0
) -> tuple[dict[str, Any], dict]:
    """Choose ``(tau, k)`` on ``validation``, measure on ``test`` (see the module docstring).

    ``f1_tolerance``: the rule is the earliest-stopping pair within this much of the best validation
    prefix macro-F1 (:func:`~saferlhfv.algorithms.streaming.choose_rule`).

    Returns:
        ``(result, table)``: ``result`` with ``macro_f1`` (whole answers, response head at the last
        token at 0.5), ``prefix_macro_f1``, ``mean_fraction_seen`` (harmful test answers; never
        stopped = 1.0), ``flagged_share``, ``tau``, ``k`` and ``validation`` (the rule's metrics
        there); ``table`` the test answers' per-position scores (``scores``), labels (``is_harmful``)
        and the response position of each one's first harmful-word token (``first_harmful``, -1: none).
    """
    v_scores, v_mask, v_labels = _scores(model, processor, validation, batch_size)
    rule = choose_rule(v_scores, v_mask, v_labels, taus=TAUS, ks=KS, f1_tolerance=f1_tolerance)
    t_scores, t_mask, t_labels = _scores(model, processor, test, batch_size)
    last = t_mask.long().sum(dim=1) - 1
    end = t_scores.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
    test_m = rule_metrics(t_scores, t_mask, t_labels, tau=rule["tau"], k=rule["k"])
    result = {
        "macro_f1": round(macro_f1(end >= 0.5, t_labels), 4),
        "prefix_macro_f1": round(test_m["prefix_macro_f1"], 4),
        "mean_fraction_seen": round(test_m["mean_fraction_seen"], 4),
        "flagged_share": round(test_m["flagged_share"], 4),
        "tau": rule["tau"],
        "k": rule["k"],
        "validation": {k: round(v, 4) if isinstance(v, float) else v for k, v in rule.items()},
    }
    table = {
        "scores": [[round(float(x), 4) for x in s[m]] for s, m in zip(t_scores, t_mask)],
        "is_harmful": [bool(x) for x in t_labels],
        "first_harmful": first_harmful_positions(processor, test, batch_size=batch_size),
    }
    return result, table


def _train_one(cfg: Config, out_dir: Path, sft_dir: Path, train_ds, *, alpha: float, gamma: float, prefixes: bool,
               desc: str, resume: bool):  # fmt: skip
    backbone, processor = _load_backbone(cfg, sft_dir)
    model = StreamingMonitor(backbone, dropout=cfg.monitor.dropout, seed=replicate_seed(cfg))
    # the token head's dropout draws from the global generator: seed it here, or the masks depend on
    # whatever drew from it earlier in the process (two runs of the same config trained differently)
    torch.manual_seed(replicate_seed(cfg))
    trainer = Trainer(
        model=model,
        dataset=train_ds,
        collate_fn=monitor_collate(processor),
        loss_fn=_loss_fn(alpha, gamma, prefixes),
        cfg=cfg.monitor,
        out_dir=out_dir,
        desc=desc,
        seed=replicate_seed(cfg),
    )
    result = trainer.train(resume=resume)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    if trainer.accelerator.is_main_process:
        save_monitor(model, processor, out_dir / "model")
    return model, processor, result


def _precursor_policy(cfg: Config, sft_dir: Path):
    from accelerate import PartialState

    from saferlhfv.guardrail import vlm_policy
    from saferlhfv.models.factory import load_saved_vlm

    model, processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
    model.to(PartialState().device)
    return vlm_policy(model, processor, max_new_tokens=cfg.data.max_response_tokens)


def train_monitor(cfg: Config, out_dir: str | Path, sft_dir: str | Path, *, resume: bool = True) -> dict[str, Any]:
    """Train the streaming monitor (and its baseline) from the SFT backbone in ``sft_dir`` (the ``monitor`` stage).

    Writes ``out_dir/model`` (the monitor), ``out_dir/baseline/model`` (the baseline, with
    ``monitor.baseline``), ``out_dir/test_scores.json`` (per-position test scores of both) and, with
    ``monitor.streaming_prompts``, ``out_dir/streaming_answers.json`` (the measurement's answers).

    Returns:
        ``macro_f1``, ``prefix_macro_f1``, ``mean_fraction_seen``, ``tau``, ``k`` (the monitor on the
        test split, ``(tau, k)`` chosen on validation), ``baseline`` (the same keys for the baseline,
        or None), ``streaming`` (:func:`~saferlhfv.streaming_guardrail.measure_streaming` of the SFT
        precursor on the evaluation prompts under the monitor's rule, or None), ``seconds``, and the
        details: ``flagged_share``, ``validation`` (the rule there), ``rows`` (per split),
        ``policy_rows`` (per split), ``steps``, ``train_loss``.
    """
    start = time.perf_counter()
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    m = cfg.monitor
    policy = _precursor_policy(cfg, sft_dir) if m.policy_share > 0 else None
    splits = monitor_splits(cfg, policy, seed=replicate_seed(cfg))
    del policy
    model, processor, trained = _train_one(
        cfg,
        out_dir,
        sft_dir,
        splits["train"],
        alpha=m.alpha,
        gamma=m.gamma,
        prefixes=m.prefixes,
        desc="monitor",
        resume=resume,
    )
    rule = {"batch_size": m.batch_size, "f1_tolerance": m.rule_f1_tolerance}
    result, table = evaluate_monitor(model, processor, splits["validation"], splits["test"], **rule)
    tables = {"monitor": table}
    baseline = None
    if m.baseline:
        base_model, base_processor, _ = _train_one(
            cfg,
            out_dir / "baseline",
            sft_dir,
            splits["train"],
            alpha=0.0,
            gamma=0.0,
            prefixes=False,
            desc="baseline",
            resume=resume,
        )
        baseline, tables["baseline"] = evaluate_monitor(
            base_model, base_processor, splits["validation"], splits["test"], **rule
        )
    write_json_atomic(out_dir / TEST_SCORES, tables)  # per-position test scores, first harmful tokens
    streaming = None
    if m.streaming_prompts > 0:
        streaming, rows = streaming_measurement(cfg, model, processor, sft_dir, tau=result["tau"], k=result["k"])
        write_json_atomic(out_dir / STREAMING_ANSWERS, rows)
    return {
        **result,
        "baseline": baseline,
        "streaming": streaming,
        "rows": {name: len(ds) for name, ds in splits.items()},
        "policy_rows": {name: sum(s == "policy" for s in ds["source"]) for name, ds in splits.items()},
        "steps": trained["steps"],
        "train_loss": None if trained["train_loss"] != trained["train_loss"] else round(trained["train_loss"], 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
