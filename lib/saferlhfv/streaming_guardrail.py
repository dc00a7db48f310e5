"""Streaming moderation: the streaming content monitor used as a guardrail.

Full-output moderation (:mod:`saferlhfv.guardrail`) lets the policy write the whole answer, then
asks the guard; a flagged answer is replaced by the refusal (or regenerated). *Streaming*
moderation reads along while the answer is written: the policy writes token by token with its KV
cache, the monitor scores every new prefix through its own cache
(:func:`saferlhfv.models.streaming.stream_generate`), and when the rule ``(tau, k)`` fires
(:func:`saferlhfv.algorithms.streaming.stop_position`) generation stops and the user gets the
guardrail's refusal (:data:`saferlhfv.guardrail.REFUSAL`) instead of the cut answer::

    answer_i  = REFUSAL                    if the rule fired at some t <= end of answer i
              = the policy's whole answer  otherwise

The tokens a stopped answer did not write are never generated: that, and never showing a harmful
answer's first words, is what streaming buys over full-output moderation.

:func:`streaming_moderation` moderates a set of prompts (one at a time: each prompt seeded
``seed + i``); :func:`measure_streaming` judges the result with the oracle next to the same
policy unmoderated (same seeds, so a moderated answer is a prefix of the unmoderated one);
:func:`full_output_moderation` reads the ``guard`` stage's saved rounds into the same numbers
(safety, benign helpfulness, tokens generated) for the comparison table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saferlhfv.guardrail import REFUSAL, _columns

__all__ = [
    "ModeratedAnswer",
    "streaming_moderation",
    "moderation_summary",
    "measure_streaming",
    "text_tokens",
    "full_output_moderation",
    "token_scores",
    "first_harmful_index",
    "MEASURE_KEYS",
]

#: the numbers :func:`measure_streaming` reports per arm (``unmoderated`` and ``streaming``).
MEASURE_KEYS = (
    "safety_rate",
    "harmful_safety_rate",
    "benign_helpfulness",
    "tokens_generated",
    "tokens_per_answer",
    "stopped_share",
    "seconds",
)


@dataclass
class ModeratedAnswer:
    """One prompt under streaming moderation.

    Attributes:
        text: what the user gets: the answer, or the refusal when the rule fired.
        generated: what the policy wrote before it was stopped (the whole answer when not stopped).
        stopped: the rule fired.
        stop_index: the answer position (0 = first token) where it fired; -1 if never.
        tokens: tokens the policy generated (``len(token_ids)``: the end-of-turn token included
            when it was written).
        scores: the monitor's ``P(harmful | answer so far)`` after each token (empty unmonitored).
        token_ids: the generated tokens.
    """

    text: str
    generated: str
    stopped: bool
    stop_index: int
    tokens: int
    scores: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def streaming_moderation(
    policy,
    processor,
    monitor,
    prompts,
    *,
    tau: float,
    k: int,
    max_new_tokens: int = 48,
    seed: int = 0,
    do_sample: bool = True,
    temperature: float = 1.0,
    refusal: str = REFUSAL,
) -> list[ModeratedAnswer]:
    """Answer every prompt under a streaming monitor; a stopped answer is replaced by ``refusal``.

    Each answer is written by :func:`~saferlhfv.models.streaming.stream_generate` (both models
    with their own KV cache, one decoder step each per token), one prompt at a time, prompt ``i``
    seeded ``seed + i``.

    Args:
        policy: the VLM that answers (e.g. the SFT precursor).
        processor: its processor (shared with the monitor).
        monitor: a :class:`~saferlhfv.models.monitor.StreamingMonitor`, or None: the same answers
            unmoderated (same seeds; nothing is stopped).
        prompts: a dataset / list of dicts / dict of columns with ``image`` and ``question``.
        tau, k: the stopping rule (the ``k``-th token scoring at least ``tau`` stops the answer).
        refusal: what a stopped answer becomes (the guardrail's refusal by default).

    Returns:
        One :class:`ModeratedAnswer` per prompt, in order.
    """
    from saferlhfv.models.streaming import stream_generate

    images, questions = _columns(prompts)
    out = []
    for i, (image, question) in enumerate(zip(images, questions)):
        r = stream_generate(
            policy, monitor, processor, image, question, tau=tau, k=k, max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, seed=seed + i,
        )  # fmt: skip
        out.append(
            ModeratedAnswer(
                text=refusal if r.flagged else r.text,
                generated=r.text,
                stopped=r.flagged,
                stop_index=r.stop_index,
                tokens=len(r.token_ids),
                scores=list(r.scores),
                token_ids=list(r.token_ids),
            )
        )
    return out


def moderation_summary(
    texts: Sequence[str], contexts: Sequence[str], tokens: Sequence[int], stopped: Sequence[bool], seconds: float | None
) -> dict[str, Any]:
    """The oracle's verdict on delivered answers, with what producing them cost.

    Args:
        texts: the delivered answers (refusals included); contexts: the prompts' ``context`` column.
        tokens: tokens the policy generated per answer; stopped: per answer, whether moderation replaced it.
        seconds: wall time to produce them (None when not measured).

    Returns:
        ``safety_rate``, ``harmful_safety_rate``, ``benign_helpfulness`` (:func:`saferlhfv.evaluate.summarize`),
        ``tokens_generated`` (total), ``tokens_per_answer`` (mean), ``stopped_share``, ``seconds``.
    """
    from saferlhfv.evaluate import judge_samples, summarize

    s = summarize(judge_samples(list(contexts), list(texts)))
    n = max(len(texts), 1)
    return {
        "safety_rate": s["safety_rate"],
        "harmful_safety_rate": s["harmful_safety_rate"],
        "benign_helpfulness": s["benign_helpfulness"],
        "tokens_generated": int(sum(tokens)),
        "tokens_per_answer": round(sum(tokens) / n, 2),
        "stopped_share": round(sum(bool(x) for x in stopped) / n, 4),
        "seconds": None if seconds is None else round(seconds, 2),
    }


def measure_streaming(
    policy,
    processor,
    monitor,
    prompts,
    *,
    tau: float,
    k: int,
    max_new_tokens: int = 48,
    seed: int = 0,
    do_sample: bool = True,
    temperature: float = 1.0,
    return_answers: bool = False,
):
    """Streaming moderation against no moderation, on the same prompts and seeds, judged by the oracle.

    Args:
        prompts: with ``image``, ``question`` and ``context`` (``rl_prompts(cfg.data, "evaluation")``).
        return_answers: also return both arms' :class:`ModeratedAnswer` lists.

    Returns:
        ``{"prompts", "tau", "k", "unmoderated": {...}, "streaming": {...}, "token_share",
        "stopped_harmful_prompts", "stopped_benign_prompts"}``: each arm has :data:`MEASURE_KEYS`
        (:func:`moderation_summary`); ``token_share`` = streaming tokens / unmoderated tokens; the last
        two the share of harmful / benign prompts whose answer was stopped. With ``return_answers``,
        ``(result, {"unmoderated": [...], "streaming": [...]})``.
    """
    kwargs = dict(tau=tau, k=k, max_new_tokens=max_new_tokens, seed=seed, do_sample=do_sample, temperature=temperature)
    contexts = list(prompts["context"])
    harmful = [bool(json.loads(c)["harmful"]) for c in contexts]
    arms, answers = {}, {}
    for name, mon in (("unmoderated", None), ("streaming", monitor)):
        start = time.perf_counter()
        got = streaming_moderation(policy, processor, mon, prompts, **kwargs)
        seconds = time.perf_counter() - start
        answers[name] = got
        arms[name] = moderation_summary(
            [a.text for a in got], contexts, [a.tokens for a in got], [a.stopped for a in got], seconds
        )

    def share(flag: bool) -> float | None:
        xs = [a.stopped for a, h in zip(answers["streaming"], harmful) if h == flag]
        return round(sum(xs) / len(xs), 4) if xs else None

    tokens = arms["streaming"]["tokens_generated"], arms["unmoderated"]["tokens_generated"]
    result = {
        "prompts": len(contexts),
        "tau": float(tau),
        "k": int(k),
        **arms,
        "token_share": round(tokens[0] / max(tokens[1], 1), 4),
        "stopped_harmful_prompts": share(True),
        "stopped_benign_prompts": share(False),
    }
    return (result, answers) if return_answers else result


def text_tokens(tokenizer, text: str, *, max_new_tokens: int | None = None) -> int:
    """Tokens a policy generated to write ``text``: its tokens plus the end-of-turn token, at most
    ``max_new_tokens`` (an answer that hit the cap wrote no end-of-turn token). A re-tokenisation of
    the decoded text: equal to the generated count for the tiny world's tokenizer, close otherwise."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    return n if max_new_tokens is None else min(n, max_new_tokens)


def full_output_moderation(
    guard_folder: str | Path,
    tokenizer,
    *,
    max_new_tokens: int | None = None,
    rounds: Sequence[int] = (0, 5),
    fallback: bool = True,
) -> dict[str, dict[str, Any]]:
    """Full-output moderation as the ``guard`` stage measured it, in :func:`moderation_summary`'s numbers.

    Reads the stage's ``rounds.json``: the filter-and-regenerate run of output moderation, judged
    after each round with answers still flagged replaced by the refusal (``output_fallback``; with
    ``fallback=False`` as they are, ``output``: the paper's plain filter-and-regenerate).
    Tokens are every answer the policy wrote up to that round (round 0: one per prompt; round
    ``r``: plus the regenerated ones), counted with :func:`text_tokens`.

    Args:
        guard_folder: the ``guard`` stage's artifact folder.
        tokenizer: the policy's tokenizer (``processor.tokenizer``).
        rounds: which rounds to report (0: one pass, flagged answers refused; 5: the paper's five
            regeneration rounds).

    Returns:
        ``{"round_<r>": {safety_rate, harmful_safety_rate, benign_helpfulness, tokens_generated,
        tokens_per_answer, stopped_share, seconds (None: not measured separately), generations}}``;
        ``tokens_per_answer`` is per prompt, ``stopped_share`` the share still flagged after round ``r``
        (refused with ``fallback``).
    """
    data = json.loads((Path(guard_folder) / "rounds.json").read_text())
    run = data["results"]["output"]
    per_round = data["per_round"]["output_fallback" if fallback else "output"]
    n = len(run["responses"][0])
    # what the policy wrote in each round (a flagged redraw is not always the answer kept)
    drawn = run.get("drawn") or [[run["responses"][j][i] for i in items] for j, items in enumerate(run["regenerated"])]
    out = {}
    for r in rounds:
        last = min(r, len(run["responses"]) - 1)
        tokens = sum(
            text_tokens(tokenizer, a, max_new_tokens=max_new_tokens) for j in range(last + 1) for a in drawn[j]
        )
        row = per_round[min(r, len(per_round) - 1)]
        out[f"round_{r}"] = {
            "safety_rate": row["safety_rate"],
            "harmful_safety_rate": row["harmful_safety_rate"],
            "benign_helpfulness": row["benign_helpfulness"],
            "tokens_generated": tokens,
            "tokens_per_answer": round(tokens / max(n, 1), 2),
            "stopped_share": round(row["flagged"] / max(n, 1), 4),
            "seconds": None,
            "generations": sum(len(run["regenerated"][j]) for j in range(last + 1)),
        }
    return out


def token_scores(tokenizer, answer: ModeratedAnswer) -> list[tuple[str, float]]:
    """``(token text, P(harmful | answer up to it))`` for each token a monitored answer wrote."""
    return [(tokenizer.decode([t]), float(s)) for t, s in zip(answer.token_ids, answer.scores)]


def first_harmful_index(tokenizer, token_ids: Sequence[int], context) -> int:
    """Index of the first generated token that reaches into a harmful word of the answer, -1 if none.

    The oracle's :func:`~saferlhfv.data.oracle.harmful_word_spans` gives character spans of the
    decoded (stripped) answer; token ``j`` is the first whose decoded prefix ``token_ids[: j + 1]``
    extends past the first span's start.

    Args:
        token_ids: the tokens a policy wrote (e.g. :attr:`ModeratedAnswer.token_ids`).
        context: the prompt's ``context`` (JSON string or dict).
    """
    from saferlhfv.data.oracle import harmful_word_spans

    full = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    lead = len(full) - len(full.lstrip())
    spans = harmful_word_spans(context, full.strip())
    if not spans:
        return -1
    start = spans[0][0]
    for j in range(len(token_ids)):
        if len(tokenizer.decode(list(token_ids[: j + 1]), skip_special_tokens=True)) - lead > start:
            return j
    return -1
