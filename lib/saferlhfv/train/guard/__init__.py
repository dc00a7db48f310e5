"""The guard stage, Beaver-Guard-V, in three modules:

* :mod:`~saferlhfv.train.guard.data`: the training set (world labels, the precursor's judged
  answers, misnamed-object rewrites, typographic pictures, benign look-alike twins, a single-response
  BeaverTails-V source; the probe items kept out) and its collation;
* :mod:`~saferlhfv.train.guard.stage`: the builds of the two stages (:func:`train_guard_model`,
  :func:`evaluate_guard`) and loading their results;
* :mod:`~saferlhfv.train.guard.evaluation`: moderation metrics, the filter-and-regenerate rounds
  judged by the oracle, the oracle guard, text tables.

The guard at inference (thresholds, filter-and-regenerate) is :mod:`saferlhfv.guardrail`.
"""

from saferlhfv.train.guard.data import (
    drop_probe_items,
    guard_collate,
    guard_rows,
    guard_training_set,
    lookalike_rows,
    misname_rows,
    precursor_rows,
    probe_keys,
    typographic_rows,
    wrapper_rows,
)
from saferlhfv.train.guard.evaluation import (
    PAPER_SAFETY_GAIN,
    TARGETS,
    OracleGuard,
    describe,
    judge_rounds,
    moderation_metrics,
    probe_comparison,
    probe_errors,
    probe_threshold_sweep,
    round_curves,
    score_table,
    severity_rule_effect,
    target_table,
)
from saferlhfv.train.guard.stage import (
    BASELINE_OVERRIDES,
    evaluate_guard,
    load_guard,
    load_guard_results,
    train_guard_model,
)

__all__ = [
    "PAPER_SAFETY_GAIN",
    "guard_rows",
    "misname_rows",
    "precursor_rows",
    "typographic_rows",
    "lookalike_rows",
    "wrapper_rows",
    "drop_probe_items",
    "probe_keys",
    "guard_training_set",
    "guard_collate",
    "score_table",
    "moderation_metrics",
    "OracleGuard",
    "judge_rounds",
    "round_curves",
    "train_guard_model",
    "evaluate_guard",
    "load_guard",
    "load_guard_results",
    "describe",
    "TARGETS",
    "BASELINE_OVERRIDES",
    "target_table",
    "probe_threshold_sweep",
    "probe_errors",
    "probe_comparison",
    "severity_rule_effect",
]
