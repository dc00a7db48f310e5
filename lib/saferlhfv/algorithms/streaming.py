"""The stopping rule of a streaming content monitor, its calibration and its metrics (plain tensors).

A streaming monitor reads an answer as it is written and gives, at every response position
``t``, a score ``s_t = P(harmful | answer up to t)``. The answer is declared harmful as soon as
``k`` positions have scored at least ``tau``; it is stopped there::

    flag_t  = [s_t >= tau] * mask_t
    stop    = min { t : sum_{u <= t} flag_u = k }        (-1 when the sum never reaches k)

``k > 1`` makes the rule robust to one spurious high score; ``tau`` trades recall against false
alarms. Both are chosen on a validation split (:func:`choose_rule`): among the pairs within a
tolerance of the best prefix macro-F1, the one that stops harmful answers earliest (the
smallest share of their tokens read).

Shapes: ``B`` answers, ``T`` positions; a *mask* ``[B, T]`` is 1 on the response positions the
rule may read (the answer's tokens and its end-of-turn token) and 0 on prompt and padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "stop_position",
    "tokens_seen",
    "macro_f1",
    "rule_metrics",
    "choose_rule",
    "pad_scores",
    "rule_sweep",
    "pareto_front",
    "stops_vs_first_harm",
    "TAUS",
    "KS",
]

#: the default grid of thresholds tau that :func:`choose_rule` tries.
TAUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
#: the default grid of flag counts k that :func:`choose_rule` tries.
KS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10)


def stop_position(scores: torch.Tensor, mask: torch.Tensor | None = None, *, tau: float, k: int) -> torch.Tensor | int:
    """Position of the ``k``-th masked position whose score reaches ``tau``.

    ``stop = min { t : sum_{u <= t} [s_u >= tau] * mask_u = k }``, or -1 when fewer than ``k``
    positions reach ``tau``.

    Args:
        scores: ``[T]`` or ``[B, T]`` harm probabilities (any real scores work).
        mask: same shape, 1 where the rule may read (default: everywhere).
        tau: the threshold; a position flags when ``score >= tau``.
        k: how many flagged positions declare the answer harmful (>= 1).

    Returns:
        For ``[T]`` an int; for ``[B, T]`` a ``[B]`` long tensor. Positions index the given
        ``T`` axis (not the masked positions only); -1 = never flagged.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    single = scores.dim() == 1
    s = scores.unsqueeze(0) if single else scores
    if s.dim() != 2:
        raise ValueError(f"scores must be [T] or [B, T], got shape {tuple(scores.shape)}")
    m = torch.ones_like(s, dtype=torch.bool) if mask is None else (mask.unsqueeze(0) if single else mask).bool()
    if m.shape != s.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match scores {tuple(s.shape)}")
    flags = (s >= tau) & m
    hit = flags & (flags.long().cumsum(dim=1) == k)  # the k-th flag, and only it
    found = hit.any(dim=1)
    stop = torch.where(found, hit.long().argmax(dim=1), torch.full_like(found, -1, dtype=torch.long))
    return int(stop[0]) if single else stop


def tokens_seen(stop: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How many masked positions the monitor has read when it stops: up to and including ``stop``.

    Args:
        stop: ``[B]`` from :func:`stop_position` (-1 = never stopped: the whole answer was read).
        mask: ``[B, T]`` response positions.

    Returns:
        ``[B]`` long counts; ``mask.sum(1)`` where ``stop == -1``.
    """
    m = mask.long()
    upto = m.cumsum(dim=1).gather(1, stop.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(stop >= 0, upto, m.sum(dim=1))


def macro_f1(pred: Sequence[bool] | torch.Tensor, label: Sequence[bool] | torch.Tensor) -> float:
    """Mean of the F1 of the two classes (harmful as positive, then safe as positive).

    ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``; a class absent from both ``pred`` and ``label``
    has F1 1 (nothing to find, nothing found).
    """
    p = torch.as_tensor(pred).bool().flatten()
    y = torch.as_tensor(label).bool().flatten()
    if p.shape != y.shape:
        raise ValueError(f"{p.numel()} predictions for {y.numel()} labels")
    f1s = []
    for cls in (True, False):
        tp = int(((p == cls) & (y == cls)).sum())
        fp = int(((p == cls) & (y != cls)).sum())
        fn = int(((p != cls) & (y == cls)).sum())
        f1s.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / 2


def rule_metrics(
    scores: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, *, tau: float, k: int
) -> dict[str, float]:
    """The rule ``(tau, k)`` on a set of scored answers.

    Args:
        scores: ``[B, T]`` per-position harm probabilities.
        mask: ``[B, T]`` response positions.
        labels: ``[B]`` 1 = harmful answer (the oracle), 0 = safe.

    Returns:
        ``prefix_macro_f1`` (decision: the rule fired somewhere in the answer),
        ``mean_fraction_seen`` (harmful answers: tokens read when stopped / tokens of the answer;
        an answer never flagged counts 1.0; NaN when there is no harmful answer),
        ``flagged_share`` (all answers), ``tau``, ``k``.
    """
    stop = stop_position(scores, mask, tau=tau, k=k)
    flagged = stop >= 0
    y = labels.bool()
    frac = tokens_seen(stop, mask).float() / mask.long().sum(dim=1).clamp(min=1).float()
    return {
        "prefix_macro_f1": macro_f1(flagged, y),
        "mean_fraction_seen": float(frac[y].mean()) if y.any() else float("nan"),
        "flagged_share": float(flagged.float().mean()),
        "tau": float(tau),
        "k": int(k),
    }


def choose_rule(
    scores: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    taus: Sequence[float] = TAUS,
    ks: Sequence[int] = KS,
    f1_tolerance: float = 0.0,
) -> dict[str, float]:
    """The ``(tau, k)`` of the grid that stops harmful answers earliest at (nearly) the best prefix macro-F1.

    Among the pairs whose prefix macro-F1 on these (validation) answers is within ``f1_tolerance``
    of the best pair's, the one with the smallest ``mean_fraction_seen`` (harmful answers stopped
    earliest); ties to the higher F1, then to the first pair in grid order (``k`` ascending, then
    ``tau``). ``f1_tolerance = 0`` is "best F1, ties to the earlier stop". The F1 surface is often
    flat in ``k`` while the stop moves a lot: a tolerance of a point of F1 can halve the tokens read.

    Returns:
        :func:`rule_metrics` of the chosen pair (``tau`` and ``k`` among its keys).
    """
    if f1_tolerance < 0:
        raise ValueError(f"f1_tolerance must be >= 0, got {f1_tolerance}")
    grid = rule_sweep(scores, mask, labels, taus=taus, ks=ks)
    if not grid:
        raise ValueError("choose_rule needs at least one tau and one k")
    best_f1 = max(m["prefix_macro_f1"] for m in grid)
    eligible = [m for m in grid if m["prefix_macro_f1"] >= best_f1 - f1_tolerance - 1e-9]
    # min() keeps the first of equal keys: grid order breaks the remaining ties
    return min(eligible, key=lambda m: (round(m["mean_fraction_seen"], 9), -round(m["prefix_macro_f1"], 9)))


def pad_scores(rows: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-answer scores (e.g. the stage's ``test_scores.json``) -> ``(scores [B, T], mask [B, T])``,
    left-aligned, 0 / mask False after each row's end."""
    width = max((len(r) for r in rows), default=0)
    scores = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        scores[i, : len(r)] = torch.as_tensor(r, dtype=torch.float)
        mask[i, : len(r)] = True
    return scores, mask


def rule_sweep(
    scores: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    taus: Sequence[float] = TAUS,
    ks: Sequence[int] = KS,
) -> list[dict[str, float]]:
    """:func:`rule_metrics` of every ``(tau, k)`` of the grid (``k`` ascending, then ``tau``): the
    points of the prefix macro-F1 against mean-fraction-seen plane that :func:`choose_rule` picks from."""
    return [rule_metrics(scores, mask, labels, tau=tau, k=k) for k in ks for tau in taus]


def pareto_front(points: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """The points no other point beats on both axes (higher ``prefix_macro_f1``, lower
    ``mean_fraction_seen``), sorted by ``mean_fraction_seen``: the best F1 reachable at each budget."""
    ordered = sorted(points, key=lambda m: (m["mean_fraction_seen"], -m["prefix_macro_f1"]))
    front, best = [], float("-inf")
    for m in ordered:
        if m["prefix_macro_f1"] > best + 1e-12:
            front.append(m)
            best = m["prefix_macro_f1"]
    return front


def stops_vs_first_harm(
    scores: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    first_harmful: Sequence[int] | torch.Tensor,
    *,
    tau: float,
    k: int,
) -> dict[str, object]:
    """Where the rule stops harmful answers, against where their first harmful word starts.

    Args:
        scores, mask, labels: as :func:`rule_metrics`.
        first_harmful: ``[B]`` response position of each answer's first harmful-word token (-1: none),
            on the same axis as ``scores`` (:func:`saferlhfv.models.monitor.first_harmful_token`).

    Returns:
        Over the harmful answers that have a harmful word: ``stop_fraction`` (per answer, tokens read
        when stopped / answer length; None when never stopped), ``first_harm_fraction`` (tokens up to
        and including the first harmful token / answer length), ``stopped_share``,
        ``stopped_before_first_harm`` (share stopped at a position before the first harmful token:
        the word never reached the monitor, let alone the user), ``stopped_at_or_before_first_harm``
        and ``n``.
    """
    stop = stop_position(scores, mask, tau=tau, k=k)
    lengths = mask.long().sum(dim=1).clamp(min=1)
    first = torch.as_tensor(first_harmful, dtype=torch.long)
    keep = labels.bool() & (first >= 0)
    idx = keep.nonzero().flatten().tolist()
    stop_frac = [None if int(stop[i]) < 0 else (int(stop[i]) + 1) / int(lengths[i]) for i in idx]
    harm_frac = [(int(first[i]) + 1) / int(lengths[i]) for i in idx]
    n = len(idx)

    def share(cond) -> float:
        return sum(1 for i in idx if cond(int(stop[i]), int(first[i]))) / n if n else float("nan")

    return {
        "stop_fraction": stop_frac,
        "first_harm_fraction": harm_frac,
        "stopped_share": share(lambda s, f: s >= 0),
        "stopped_before_first_harm": share(lambda s, f: 0 <= s < f),
        "stopped_at_or_before_first_harm": share(lambda s, f: 0 <= s <= f),
        "n": n,
    }
