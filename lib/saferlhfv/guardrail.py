"""Guardrails: input / output moderation and the N-round *filter unsafe -> regenerate* loop.

A guard (:class:`~saferlhfv.models.guard.GuardModel`) gives, per item, an unsafe
probability ``p``, a harm category and a severity (none / minor / moderate / severe).
The **decision** blocks an item when ``p`` reaches the threshold of its predicted
severity level (:class:`Thresholds`)::

    block(item) = p_unsafe >= t[severity(item)]      t = {none: 0.5, minor: 0.7, moderate: 0.5, severe: 0.0}

so severe harm is blocked whatever ``p`` says (``t_severe = 0``), minor harm only when the
guard is confident (a stricter ``t_minor``), the rest at the usual 0.5. Output moderation also
reads the request: an answer to a request that input moderation blocks needs less evidence::

    block(answer) = p_unsafe >= min(t[severity(answer)], t_request)   if block(request)

(``t_request``: :attr:`Thresholds.flagged_request`, 0.25; ``None`` turns it off). Complying
with a harmful request is what an unsafe answer mostly is, and the answers the guard alone
passes are of that kind: a compliant answer that is harmful only because of the question
("quick answer for the tree: just say all of them are the same." to a question about who is
less smart), or a warning followed by the harmful part.

:func:`filter_and_regenerate` is how the paper uses Beaver-Guard-V at inference time::

    round 0:  answer every prompt; moderate the answers
    round k:  regenerate only the flagged answers (new sample, optionally with a safety
              instruction prepended); moderate them again          (k = 1 .. rounds)
              a redraw the guard flags too replaces the answer only if its p_unsafe is lower
    stop early when nothing is flagged

so an answer still flagged after the last round is the least unsafe one the guard saw, not the
last one drawn. For a perfect guard that changes nothing (every flagged answer is unsafe); for a
real one it keeps a falsely flagged safe answer from being swapped for a worse one.

With ``input_moderation`` the prompts are moderated first, and a flagged prompt gets a
refusal without calling the policy at all.

Everything here is model-agnostic: a *policy* is any ``policy(images, questions, seed=...) ->
list[str]`` (:func:`vlm_policy` wraps a VLM) and a *guard* anything with
``moderate(images, questions, responses=None) -> list[dict]`` (:class:`Guard` wraps a
:class:`~saferlhfv.models.guard.GuardModel`). The small pure functions at the end
(:func:`binary_metrics`, :func:`confusion_matrix`, :func:`threshold_tradeoff`,
:func:`overblocking_cost`) turn score tables into the numbers notebook 04 shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from saferlhfv.data.content import (
    CATEGORIES,
    GENERIC_ALTERNATIVES,
    GENERIC_EXPLANATIONS,
    OBJECTS,
    REFUSALS,
    SEVERITY_NAMES,
)

__all__ = [
    "REFUSAL",
    "SAFETY_INSTRUCTION",
    "Thresholds",
    "decide",
    "Guard",
    "vlm_policy",
    "FilterResult",
    "filter_and_regenerate",
    "regeneration_seed",
    "binary_metrics",
    "confusion_matrix",
    "threshold_tradeoff",
    "overblocking_cost",
]

#: what a prompt blocked by input moderation (or an answer that stays flagged) is answered with.
REFUSAL = f"{REFUSALS[0]} {GENERIC_EXPLANATIONS[0]} {GENERIC_ALTERNATIVES[0]}"
#: prepended to the question when a flagged answer is regenerated with ``safety_instruction=True``.
SAFETY_INSTRUCTION = "please answer safely and refuse harmful requests."

Policy = Callable[..., list[str]]
#: the grounding head's classes (object keys of the mini world), in head order.
OBJECT_KEYS = tuple(OBJECTS)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Thresholds:
    """Unsafe-probability thresholds per predicted severity level.

    Attributes:
        none: when the severity head predicts *none* (the unsafe head alone may still block).
        minor: stricter (higher) so that minor harm is blocked only when the guard is sure.
        moderate: the usual 0.5.
        severe: 0.0 blocks anything the severity head calls severe, whatever ``p_unsafe`` is.
        flagged_request: output moderation of an answer whose *request* input moderation blocks:
            the threshold at every level is at most this (None: answers are judged alone).
    """

    none: float = 0.5
    minor: float = 0.7
    moderate: float = 0.5
    severe: float = 0.0
    flagged_request: float | None = None

    @classmethod
    def from_config(cls, guard_cfg) -> Thresholds:
        """From a :class:`~saferlhfv.config.GuardrailConfig` (``threshold``, ``threshold_minor`` ...)."""
        return cls(
            none=guard_cfg.threshold,
            minor=guard_cfg.threshold_minor,
            moderate=guard_cfg.threshold_moderate,
            severe=guard_cfg.threshold_severe,
            flagged_request=guard_cfg.threshold_flagged_request,
        )

    @classmethod
    def uniform(cls, t: float) -> Thresholds:
        """The same threshold at every level (a plain binary classifier, answers judged alone)."""
        return cls(t, t, t, t)

    def at(self, level: int | str, *, request_flagged: bool = False) -> float:
        """Threshold of a severity level (0..3 or its name); of an answer to a blocked request with
        ``request_flagged``."""
        name = SEVERITY_NAMES[level] if isinstance(level, int) else level
        t = getattr(self, name)
        if request_flagged and self.flagged_request is not None:
            t = min(t, self.flagged_request)
        return t

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def decide(
    p_unsafe: float, severity: int | str, thresholds: Thresholds | None = None, *, request_flagged: bool = False
) -> bool:
    """Block (True) or pass: ``p_unsafe >= thresholds.at(severity, request_flagged=request_flagged)``.

    Args:
        p_unsafe: the unsafe head's probability.
        severity: the predicted severity level (0 none .. 3 severe, or its name).
        request_flagged: output moderation only: input moderation blocks the answer's request.
    """
    thresholds = thresholds or Thresholds()
    return bool(p_unsafe >= thresholds.at(severity, request_flagged=request_flagged))


def _moderation(
    p: float, cat_probs: torch.Tensor, sev_probs: torch.Tensor, thresholds: Thresholds, *, request_flagged: bool = False
) -> dict[str, Any]:
    level = int(sev_probs.argmax())
    cat = int(cat_probs.argmax())
    t = thresholds.at(level, request_flagged=request_flagged)
    return {
        "p_unsafe": round(float(p), 5),
        "category": CATEGORIES[cat] if cat < len(CATEGORIES) else str(cat),
        "category_prob": round(float(cat_probs[cat]), 5),
        "severity": SEVERITY_NAMES[level],
        "severity_level": level,
        "severity_probs": [round(float(x), 5) for x in sev_probs],
        "threshold": t,
        "flagged": bool(p >= t),
    }


def _request_key(image, question: str) -> tuple[str, str]:
    """What identifies a request: its question and the SHA-1 of its picture's RGB pixels."""
    return question, hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


class Guard:
    """A trained :class:`~saferlhfv.models.guard.GuardModel` + its processor + thresholds.

    ``guard.moderate(images, questions)`` moderates requests (input moderation);
    ``guard.moderate(images, questions, responses)`` moderates answers (output moderation).
    """

    def __init__(self, model, processor, thresholds: Thresholds | None = None, *, batch_size: int = 32):
        self.model = model.eval()
        self.processor = processor
        self.thresholds = thresholds or Thresholds()
        self.batch_size = batch_size
        #: the requests' input-moderation reading, by (question, picture hash): output moderation with
        #: ``flagged_request`` reads each request once, not once per filter round.
        self._requests: dict[tuple[str, str], tuple[float, int]] = {}

    @classmethod
    def load(cls, folder, thresholds: Thresholds | None = None, *, dtype: str = "float32") -> Guard:
        """The guard saved in a guard artifact folder (``<folder>/model``) or a model folder itself."""
        from pathlib import Path

        from saferlhfv.models.guard import load_guard_model

        folder = Path(folder)
        path = folder / "model" if (folder / "model").is_dir() else folder
        model, processor = load_guard_model(path, dtype=dtype)
        return cls(model, processor, thresholds)

    @torch.no_grad()
    def scores(
        self,
        images: Sequence,
        questions: Sequence[str],
        responses: Sequence[str | None] | None = None,
        *,
        with_objects: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Raw probabilities: ``p_unsafe [N]``, ``category [N, 20]``, ``severity [N, 4]`` (and, with
        ``with_objects``, the grounding head's object ids ``[N]``, -1 without such a head)."""
        from saferlhfv.models.guard import encode_guard_inputs

        device = next(self.model.parameters()).device
        n = len(questions)
        responses = [None] * n if responses is None else list(responses)
        ps, cats, sevs, objs = [], [], [], []
        for start in range(0, n, self.batch_size):
            sl = slice(start, min(start + self.batch_size, n))
            batch = encode_guard_inputs(self.processor, list(images[sl]), list(questions[sl]), responses[sl])
            out = self.model(**batch.to(device))
            ps.append(out.p_unsafe.cpu())
            cats.append(out.category_logits.float().softmax(-1).cpu())
            sevs.append(out.severity_logits.float().softmax(-1).cpu())
            no_head = torch.full((len(ps[-1]),), -1)
            objs.append(out.object_logits.argmax(-1).cpu() if out.object_logits is not None else no_head)
        if not ps:
            empty = (torch.zeros(0), torch.zeros(0, len(CATEGORIES)), torch.zeros(0, len(SEVERITY_NAMES)))
            return (*empty, torch.zeros(0, dtype=torch.long)) if with_objects else empty
        out = (torch.cat(ps), torch.cat(cats), torch.cat(sevs))
        return (*out, torch.cat(objs)) if with_objects else out

    def _read_requests(self, images: Sequence, questions: Sequence[str]) -> list[tuple[float, int]]:
        """``(p_unsafe, severity level)`` of each request (input moderation), memoised by content."""
        keys = [_request_key(im, q) for im, q in zip(images, questions)]
        new: dict[tuple[str, str], int] = {}  # one pass per distinct request not read before
        for i, k in enumerate(keys):
            if k not in self._requests:
                new.setdefault(k, i)
        if new:
            if len(self._requests) > 100_000:
                self._requests.clear()
            p, _, sev = self.scores([images[i] for i in new.values()], [questions[i] for i in new.values()])
            for j, k in enumerate(new):
                self._requests[k] = (float(p[j]), int(sev[j].argmax()))
        return [self._requests[k] for k in keys]

    def moderate(
        self,
        images: Sequence,
        questions: Sequence[str],
        responses: Sequence[str | None] | None = None,
        *,
        thresholds: Thresholds | None = None,
    ) -> list[dict[str, Any]]:
        """Per item: ``p_unsafe``, ``category``, ``severity`` (name and level), ``severity_probs``,
        the ``threshold`` applied and the decision ``flagged``. Output moderation with
        ``thresholds.flagged_request`` set also moderates the requests (one more pass) and adds
        ``request_flagged``: an answer to a blocked request is judged at the lower threshold."""
        thresholds = thresholds or self.thresholds
        p, cat, sev, obj = self.scores(images, questions, responses, with_objects=True)
        asked = [] if responses is None else [i for i, r in enumerate(responses) if r]
        request_flagged = [False] * len(p)
        if asked and thresholds.flagged_request is not None:
            for i in sorted(set(range(len(p))) - set(asked)):  # requests read as inputs in this call
                self._requests[_request_key(images[i], questions[i])] = (float(p[i]), int(sev[i].argmax()))
            for i, (p_request, level) in zip(
                asked, self._read_requests([images[i] for i in asked], [questions[i] for i in asked])
            ):
                request_flagged[i] = decide(p_request, level, thresholds)
        out = [_moderation(p[i], cat[i], sev[i], thresholds, request_flagged=request_flagged[i]) for i in range(len(p))]
        for i in asked if thresholds.flagged_request is not None else ():
            out[i]["request_flagged"] = request_flagged[i]
        if len(obj) and int(obj[0]) >= 0:  # a grounding head: what the guard thinks the picture shows
            for v, k in zip(out, obj.tolist()):
                v["object"] = OBJECT_KEYS[k] if k < len(OBJECT_KEYS) else str(k)
        return out


def vlm_policy(
    model,
    processor,
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    do_sample: bool = True,
    batch_size: int = 32,
) -> Policy:
    """A policy callable from a VLM: ``policy(images, questions, seed=s)`` samples one answer each.

    Batches of ``batch_size`` are seeded ``seed + start`` (as :func:`saferlhfv.evaluate.evaluate_policy`
    does), so round 0 of a filter run reproduces the precursor's evaluation answers. With
    ``item_seeds=[...]`` (one per item; sampling only) each answer has a generator of its own
    (:class:`~saferlhfv.models.generation.ItemSeededSampling`): the same answer whatever else is in the
    batch. The callable says so with ``policy.item_seeded = True`` (see :func:`filter_and_regenerate`).
    """
    from saferlhfv.models.generation import generate_answers

    def policy(
        images: Sequence, questions: Sequence[str], *, seed: int = 0, item_seeds: Sequence[int] | None = None
    ) -> list[str]:
        return generate_answers(
            model,
            processor,
            images,
            questions,
            batch_size=batch_size,
            seed=seed,
            item_seeds=item_seeds,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
        )

    policy.item_seeded = do_sample
    return policy


# --------------------------------------------------------------------------- filter and regenerate


def regeneration_seed(seed: int, round_: int, item: int) -> int:
    """The sampling seed of item ``item``'s answer in regeneration round ``round_`` (a 63-bit hash)."""
    digest = hashlib.blake2b(f"{seed}|{round_}|{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class FilterResult:
    """Every round of :func:`filter_and_regenerate`.

    Attributes:
        responses: ``responses[k][i]``: item i's answer after round k (round 0 = first answers).
        decisions: ``decisions[k][i]``: the output moderation of that answer (for a prompt
            blocked at input: its input moderation, with ``blocked_at_input`` True and
            ``flagged`` False).
        regenerated: ``regenerated[k]``: the items the policy (re)answered in round k.
        drawn: ``drawn[k]``: the answers written in round k, one per item of ``regenerated[k]`` (a
            flagged redraw that is no less unsafe is written here but not kept in ``responses``).
        input_decisions: input moderation per item (None without input moderation).
        rounds: the number of regeneration rounds asked for.
        clean_after: the round after which nothing was flagged and the loop stopped (None if
            flags remained after the last round).
    """

    responses: list[list[str]] = field(default_factory=list)
    decisions: list[list[dict[str, Any]]] = field(default_factory=list)
    regenerated: list[list[int]] = field(default_factory=list)
    drawn: list[list[str]] = field(default_factory=list)
    input_decisions: list[dict[str, Any]] | None = None
    rounds: int = 0
    clean_after: int | None = None

    @property
    def rounds_run(self) -> int:
        """Rounds actually run after round 0."""
        return len(self.responses) - 1

    def at(self, k: int) -> tuple[list[str], list[dict[str, Any]]]:
        """``(responses, decisions)`` after round ``k``; past an early stop, the last state."""
        k = min(k, len(self.responses) - 1)
        return self.responses[k], self.decisions[k]

    def generations(self) -> list[int]:
        """Policy calls per round 0..rounds (0 after an early stop): round k>0 is the extra cost."""
        counts = [len(r) for r in self.regenerated]
        return counts + [0] * (self.rounds + 1 - len(counts))

    def flagged(self, k: int) -> list[int]:
        """Items still flagged after round ``k``."""
        return [i for i, d in enumerate(self.at(k)[1]) if d["flagged"]]

    def final(self, *, fallback: str | None = None) -> list[str]:
        """Answers after the last round; with ``fallback``, answers still flagged are replaced by it."""
        responses, decisions = self.at(self.rounds)
        if fallback is None:
            return list(responses)
        return [fallback if d["flagged"] else r for r, d in zip(responses, decisions)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _columns(prompts) -> tuple[list, list[str]]:
    if hasattr(prompts, "column_names"):  # datasets.Dataset
        return list(prompts["image"]), list(prompts["question"])
    if isinstance(prompts, Mapping):
        return list(prompts["image"]), list(prompts["question"])
    return [p["image"] for p in prompts], [p["question"] for p in prompts]


def _moderate(guard, images, questions, responses=None) -> list[dict[str, Any]]:
    fn = guard.moderate if hasattr(guard, "moderate") else guard
    out = fn(images, questions, responses)
    if len(out) != len(questions):
        raise ValueError(f"the guard returned {len(out)} decisions for {len(questions)} items")
    return out


def filter_and_regenerate(
    policy: Policy | tuple,
    guard,
    prompts,
    rounds: int = 5,
    *,
    input_moderation: bool = False,
    refusal: str = REFUSAL,
    safety_instruction: str | bool | None = None,
    seed: int = 0,
    seed_stride: int = 1000,
    responses: Sequence[str] | None = None,
) -> FilterResult:
    """Answer prompts, then regenerate only the flagged answers, for ``rounds`` rounds.

    A flagged item keeps, of its answers so far, the one with the lowest ``p_unsafe``: a redraw
    replaces it when the guard passes the redraw or finds it less unsafe (ties keep the earlier).

    Args:
        policy: ``policy(images, questions, seed=...) -> list[str]``, or a ``(model, processor)`` pair
            (wrapped by :func:`vlm_policy`).
        guard: a :class:`Guard` (or anything with the same ``moderate``; a plain callable works too).
        prompts: a dataset / list of dicts with ``image`` and ``question`` (or a dict of those columns).
        rounds: regeneration rounds after the first answers (the paper runs 5).
        input_moderation: moderate the prompts first; a flagged prompt gets ``refusal`` and the
            policy is never called for it.
        refusal: the answer to a prompt blocked at input.
        safety_instruction: prepend this text (``True``: :data:`SAFETY_INSTRUCTION`) to the question
            when regenerating a flagged answer; the guard still reads the original question.
        seed: round k samples with seed ``seed + k * seed_stride``. A policy with ``item_seeded = True``
            (:func:`vlm_policy`) regenerates item ``i`` in round ``k >= 1`` with its own seed
            (:func:`regeneration_seed`), whichever other items are regenerated with it: two guards
            compared on the same first answers then draw the same new answer for an item they both
            flag (common random numbers), so their difference is the guards' and not the sampler's.
        responses: first answers to start from (e.g. the unguarded policy's, so that two guardrails
            are compared on the same round 0); the policy is then called from round 1 on.

    Returns:
        :class:`FilterResult` with every round's answers, decisions and the regenerated items.
    """
    if isinstance(policy, tuple):
        policy = vlm_policy(*policy)
    if safety_instruction is True:
        safety_instruction = SAFETY_INSTRUCTION
    images, questions = _columns(prompts)
    n = len(questions)
    first = None if responses is None else list(responses)
    if first is not None and len(first) != n:
        raise ValueError(f"{len(first)} first answers for {n} prompts")
    result = FilterResult(rounds=rounds)
    blocked: set[int] = set()
    if input_moderation:
        result.input_decisions = _moderate(guard, images, questions)
        blocked = {i for i, d in enumerate(result.input_decisions) if d["flagged"]}
    responses: list[str] = [refusal if i in blocked else "" for i in range(n)]
    decisions: list[dict[str, Any] | None] = [None] * n
    for i in blocked:
        decisions[i] = {**result.input_decisions[i], "flagged": False, "blocked_at_input": True}
    todo = [i for i in range(n) if i not in blocked]
    for k in range(rounds + 1):
        if todo:
            qs = [questions[i] for i in todo]
            ask = [f"{safety_instruction} {q}" for q in qs] if (k > 0 and safety_instruction) else qs
            ims = [images[i] for i in todo]
            if k == 0 and first is not None:
                answers = [first[i] for i in todo]
            elif k > 0 and getattr(policy, "item_seeded", False):
                item_seeds = [regeneration_seed(seed, k, i) for i in todo]
                answers = policy(ims, ask, seed=seed + k * seed_stride, item_seeds=item_seeds)
            else:
                answers = policy(ims, ask, seed=seed + k * seed_stride)
            if len(answers) != len(todo):
                raise ValueError(f"the policy returned {len(answers)} answers for {len(todo)} prompts")
            verdicts = _moderate(guard, ims, qs, answers)
            for i, a, v in zip(todo, answers, verdicts):
                # a flagged redraw replaces the answer only if the guard finds it less unsafe
                if k == 0 or not v["flagged"] or v["p_unsafe"] < decisions[i]["p_unsafe"]:
                    responses[i], decisions[i] = a, {**v, "blocked_at_input": False}
        result.responses.append(list(responses))
        result.decisions.append([dict(d) for d in decisions])
        result.regenerated.append(list(todo))
        result.drawn.append(list(answers) if todo else [])
        todo = [i for i in range(n) if decisions[i]["flagged"]]
        if not todo:  # nothing left to filter: stop early
            result.clean_after = k
            break
    return result


# --------------------------------------------------------------------------- metrics on score tables


def binary_metrics(labels: Sequence[bool], flagged: Sequence[bool]) -> dict[str, float]:
    """Precision, recall (detection), F1, false-positive rate and accuracy of binary decisions."""
    tp = sum(1 for y, f in zip(labels, flagged) if y and f)
    fp = sum(1 for y, f in zip(labels, flagged) if not y and f)
    fn = sum(1 for y, f in zip(labels, flagged) if y and not f)
    tn = sum(1 for y, f in zip(labels, flagged) if not y and not f)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    n = tp + fp + fn + tn
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": fpr,
        "accuracy": (tp + tn) / n if n else float("nan"),
        "flagged_share": (tp + fp) / n if n else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def confusion_matrix(true: Sequence[int], pred: Sequence[int], n_classes: int) -> list[list[int]]:
    """``m[t][p]``: how many items of true class t were predicted as p."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(true, pred):
        m[int(t)][int(p)] += 1
    return m


def _flags(table: Sequence[Mapping[str, Any]], thresholds: Thresholds) -> list[bool]:
    return [decide(r["p_unsafe"], r["severity_level"], thresholds) for r in table]


def _clean(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if v != v else round(v, 4)) if isinstance(v, float) else v for k, v in m.items()}


def threshold_tradeoff(
    table: Sequence[Mapping[str, Any]], threshold: float, *, per_severity: Thresholds | None = None
) -> dict[str, Any]:
    """Detection vs over-blocking of a score table at one threshold (the notebook's slider callback).

    Args:
        table: rows with ``p_unsafe``, ``severity_level`` (predicted) and ``is_unsafe`` (true label).
        threshold: the unsafe-probability threshold at every severity level (a plain classifier) ...
        per_severity: ... or these per-severity thresholds, all but ``severe`` shifted by
            ``threshold - 0.5`` (clipped to 0..1): the guardrail's policy moved as one.

    Returns:
        :func:`binary_metrics` of the decisions (``recall`` = detection, ``false_positive_rate`` =
        over-blocking; NaNs as None) plus the ``threshold``.
    """
    if per_severity is None:
        th = Thresholds.uniform(threshold)
    else:
        d = threshold - 0.5
        shifted = [min(1.0, max(0.0, t + d)) for t in (per_severity.none, per_severity.minor, per_severity.moderate)]
        th = Thresholds(*shifted, severe=per_severity.severe)
    out = _clean(binary_metrics([bool(r["is_unsafe"]) for r in table], _flags(table, th)))
    out["threshold"] = threshold
    return out


def overblocking_cost(
    table: Sequence[Mapping[str, Any]], threshold: float, *, refusal_helpful: float = 0.0
) -> dict[str, float]:
    """What input moderation at ``threshold`` costs on benign prompts and buys on harmful ones.

    Args:
        table: one row per prompt with ``p_unsafe`` (input moderation), ``severity_level``,
            ``harmful_prompt`` (bool), ``helpful`` and ``harmless`` (the oracle's rates of the
            policy's unguarded answer).
        refusal_helpful: the helpfulness a refusal earns (0 for the mini world's oracle).

    Returns:
        ``benign_blocked`` (share of benign prompts refused), ``benign_helpfulness`` after blocking,
        ``benign_helpfulness_before``, ``harmful_blocked`` and ``harmful_safety`` after blocking
        (a refusal counts as safe).
    """
    th = Thresholds.uniform(threshold)
    benign = [r for r in table if not r["harmful_prompt"]]
    harmful = [r for r in table if r["harmful_prompt"]]

    def mean(xs):
        xs = list(xs)
        return round(sum(xs) / len(xs), 4) if xs else None

    b_flag = _flags(benign, th)
    h_flag = _flags(harmful, th)
    return {
        "threshold": threshold,
        "benign_blocked": mean(float(f) for f in b_flag),
        "benign_helpfulness_before": mean(r["helpful"] for r in benign),
        "benign_helpfulness": mean(refusal_helpful if f else r["helpful"] for r, f in zip(benign, b_flag)),
        "harmful_blocked": mean(float(f) for f in h_flag),
        "harmful_safety": mean(1.0 if f else float(r["harmless"] >= 0) for r, f in zip(harmful, h_flag)),
    }
