"""The streaming content monitor stage (SCM: partial-output moderation that stops a harmful answer early):

* :mod:`~saferlhfv.train.monitor.data`: train / validation / test answers with the oracle's word and
  answer labels (:func:`monitor_splits`);
* :mod:`~saferlhfv.train.monitor.stage`: the build of the ``monitor`` stage (:func:`train_monitor`):
  the monitor and its answer-labels-only baseline, the (tau, k) rule chosen on validation, test metrics.

The model and its loss are :mod:`saferlhfv.models.monitor`, streaming through its KV cache and a policy
stopped mid-answer :mod:`saferlhfv.models.streaming`, the stopping rule and its metrics
:mod:`saferlhfv.algorithms.streaming`. Command line:
``python -m saferlhfv.train.monitor --preset tiny`` (the same as ``python -m saferlhfv.run monitor``).
"""

from saferlhfv.train.monitor.data import MONITOR_FEATURES, MONITOR_SPLITS, monitor_splits, rows_from_answers, world_row
from saferlhfv.train.monitor.stage import (
    STREAMING_ANSWERS,
    TEST_SCORES,
    evaluate_monitor,
    monitor_collate,
    train_monitor,
)

__all__ = [
    "MONITOR_FEATURES",
    "MONITOR_SPLITS",
    "TEST_SCORES",
    "STREAMING_ANSWERS",
    "monitor_splits",
    "world_row",
    "rows_from_answers",
    "monitor_collate",
    "evaluate_monitor",
    "train_monitor",
]
