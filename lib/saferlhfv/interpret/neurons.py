"""Safety neurons (Chen et al. 2024, *Towards Understanding Safety Alignment: A Mechanistic Perspective
from Safety Neurons*, arXiv 2406.14144; code THU-KEG/SafetyNeuron), between the precursor (SFT) and
an aligned policy.

A **neuron** is one MLP intermediate activation: an input of a decoder layer's ``down_proj``
(:func:`saferlhfv.interpret.hooks.record_mlp`); the tiny model has 4 layers x 344 = 1376 of them.

* **Change score** (:func:`change_scores`): both models read the precursor's own greedy answers
  (teacher forcing); a neuron's score is the RMS of ``a_aligned - a_SFT`` over the positions that
  write the answer (the last prompt token and every answer token). Neurons are ranked by it
  (:func:`top_neurons`).
* **Dynamic activation patching** (:func:`patched_generate`): the precursor decodes greedily with
  its KV cache; at every step (the prefill too) the aligned policy reads the same tokens with its own
  KV cache and its activations at the chosen neurons replace the precursor's before ``down_proj``.
  The control: random neurons, the same count per layer (:func:`random_neurons_like`).
  :func:`restored_share` is the share of the safety gap a patch closes.
* **Pre-generation safeguard** (:func:`safeguard_auc`): a logistic regression on the precursor's
  activations of the top safety neurons at the last prompt token predicts, before a token is written,
  whether its answer will be unsafe; rank AUC (:func:`roc_auc`) on held-out prompts.
* **Alignment tax** (:func:`overlap`): *helpfulness neurons* are scored the same way between the
  precursor and reward-only PPO on benign prompts; the overlap of the two top-k sets against chance.

:func:`run_safety_neurons` is the ``safety_neurons`` stage: everything above on the mini world,
judged by the oracle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from saferlhfv.evaluate import fit_logistic
from saferlhfv.interpret.hooks import at_last_prompt_token, edit_mlp, num_layers, num_neurons, record_mlp
from saferlhfv.models.generation import (
    VISION_KEYS,
    encode_prompts,
    end_token_ids,
    media_token_ids,
    model_inputs,
    response_mask,
)
from saferlhfv.models.streaming import cache_kwargs, cache_of

__all__ = [
    "Selection",
    "greedy_tokens",
    "patched_generate",
    "change_scores",
    "top_neurons",
    "random_neurons_like",
    "selection_size",
    "restored_share",
    "last_prompt_neurons",
    "roc_auc",
    "safeguard_auc",
    "overlap",
    "run_safety_neurons",
    "CHANGE_SCORES",
    "ANSWERS",
    "plot_change_scores",
    "plot_patching_curves",
    "plot_safeguard_auc",
    "plot_overlap",
]

#: neurons chosen per decoder layer: layer -> ``LongTensor`` of neuron indices (in ``0 .. I-1``).
Selection = dict[int, torch.Tensor]
#: file (in the stage's folder) with the change scores ``[L, I]``: ``safety`` and ``helpfulness``.
CHANGE_SCORES = "change_scores.pt"
#: file (in the stage's folder) with the held-out answers: precursor, aligned, patched (top / random, 5 %).
ANSWERS = "answers.json"


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def selection_size(selection: Selection) -> int:
    """Number of neurons in a selection (all layers)."""
    return sum(int(idx.numel()) for idx in selection.values())


@torch.no_grad()
def _generate_batch(
    sft, aligned, processor, images, questions, neurons: Selection, *, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of :func:`patched_generate`: ``(prompt batch ids [B, P], generated [B, R])``."""
    device = next(sft.parameters()).device
    batch = encode_prompts(processor, images, questions).to(device)
    layers = sorted(layer for layer, idx in neurons.items() if idx.numel())
    current: dict[int, torch.Tensor] = {}
    state: dict[str, Any] = {"cache": None}

    def run_aligned(module, args, kwargs):
        # the precursor is about to read these inputs: the aligned policy reads them first, with its own cache
        inputs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache")}
        inputs["use_cache"] = True
        if state["cache"] is not None:
            inputs.update(cache_kwargs(aligned, state["cache"]))
        with record_mlp(aligned, layers) as rec:
            out = aligned(*args, **inputs)
        state["cache"] = cache_of(out)
        for layer in layers:
            current[layer] = rec[layer][-1]

    def patch(layer: int):
        idx = neurons[layer].to(device)

        def fn(act: torch.Tensor) -> torch.Tensor:
            return act.index_copy(-1, idx, current[layer].index_select(-1, idx).to(act.dtype))

        return fn

    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                  suppress_tokens=media_token_ids(processor), temperature=None, top_p=None, top_k=None)  # fmt: skip
    handle = sft.register_forward_pre_hook(run_aligned, with_kwargs=True) if layers else None
    try:
        with edit_mlp(sft, {layer: patch(layer) for layer in layers}):
            out = sft.generate(**batch, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    n_prompt = batch["input_ids"].shape[1]
    return batch["input_ids"], out[:, n_prompt:]


@torch.no_grad()
def patched_generate(
    sft: torch.nn.Module,
    aligned: torch.nn.Module | None,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    neurons: Selection,
    *,
    max_new_tokens: int = 40,
    batch_size: int = 64,
    return_tokens: bool = False,
):
    """Greedy answers of ``sft`` with the chosen neurons patched from ``aligned`` at every step.

    Dynamic activation patching: the precursor decodes greedily with its KV cache (media tokens
    suppressed, stopping at EOS, as :func:`~saferlhfv.models.generation.generate_responses` does);
    before each of its forward passes (the prefill included) the aligned policy reads the same
    inputs with its own KV cache, and its activations at ``neurons`` replace the precursor's before
    ``down_proj``. The aligned policy thus follows the *precursor's* tokens, as in the paper.

    Args:
        sft, aligned: two VLMs of the same architecture and tokenizer (``aligned`` unused, may be
            None, when no neuron is chosen).
        images, questions: the prompts, one picture each.
        neurons: layer -> neuron indices ``[k_l]`` (:func:`top_neurons`); empty: plain greedy decoding.
        max_new_tokens: response budget in tokens.
        batch_size: prompts per generation batch (left padded).
        return_tokens: also return each answer's generated ids (up to and including its EOS).

    Returns:
        The decoded answers (special tokens removed, stripped), or ``(answers, tokens)``.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    if selection_size(neurons) and aligned is None:
        raise ValueError("patching needs the aligned model")
    for model in (sft, aligned):
        if model is not None:
            model.eval()
    ends = end_token_ids(sft, processor)
    texts: list[str] = []
    tokens: list[torch.Tensor] = []
    for start, stop in _batches(len(questions), batch_size):
        _, generated = _generate_batch(sft, aligned, processor, list(images[start:stop]), list(questions[start:stop]),
                                       neurons, max_new_tokens=max_new_tokens)  # fmt: skip
        keep = response_mask(generated, ends).bool() if ends else torch.ones_like(generated, dtype=torch.bool)
        tokens += [g[m].cpu() for g, m in zip(generated, keep)]
        texts += [t.strip() for t in processor.batch_decode(generated, skip_special_tokens=True)]
    return (texts, tokens) if return_tokens else texts


def greedy_tokens(model, processor, images, questions, *, max_new_tokens: int = 40, batch_size: int = 64):
    """``(answers, tokens)``: plain greedy decoding (:func:`patched_generate` with no neuron)."""
    return patched_generate(model, None, processor, images, questions, {}, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, return_tokens=True)  # fmt: skip


def _teacher_forced(processor, images, questions, completions: Sequence[torch.Tensor], device):
    """Prompts (left padded) + completions (right padded): ``(inputs, writes [B, T])``.

    ``writes`` marks the positions whose next-token prediction is part of the answer: the last prompt
    token and every completion token.
    """
    enc = encode_prompts(processor, images, questions)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    width = max([int(c.numel()) for c in completions] + [1])
    pad = processor.tokenizer.pad_token_id or 0
    comp = torch.full((len(completions), width), pad, dtype=ids.dtype)
    comp_mask = torch.zeros((len(completions), width), dtype=mask.dtype)
    for i, c in enumerate(completions):
        comp[i, : c.numel()] = c
        comp_mask[i, : c.numel()] = 1
    writes = torch.cat([torch.zeros_like(mask), comp_mask], dim=1).bool()
    writes[:, ids.shape[1] - 1] = True  # left padding: the last prompt position is real
    vision = {k: enc[k].to(device) for k in VISION_KEYS if k in enc}
    inputs = model_inputs(torch.cat([ids, comp], 1).to(device), torch.cat([mask, comp_mask], 1).to(device), vision)
    return inputs, writes.to(device)


@torch.no_grad()
def change_scores(
    sft: torch.nn.Module,
    aligned: torch.nn.Module,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    completions: Sequence[torch.Tensor],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Change score of every MLP neuron: RMS of ``a_aligned - a_SFT`` over the answer-writing positions.

    Both models read the same prompt + completion (teacher forcing, typically the precursor's greedy
    answers, :func:`greedy_tokens`); a position counts when it writes an answer token: the last prompt
    token and every completion token (its EOS included). The mean of the squared differences is taken
    over all such positions of all prompts.

    Args:
        images, questions: ``N`` prompts.
        completions: ``N`` generated id tensors ``[R_i]`` (no padding).

    Returns:
        ``[L, I]`` float32 change scores (layer, neuron).
    """
    if not len(images) == len(questions) == len(completions):
        raise ValueError(f"{len(images)} images, {len(questions)} questions, {len(completions)} completions")
    sft.eval()
    aligned.eval()
    device = next(sft.parameters()).device
    L, width = num_layers(sft), num_neurons(sft)
    total = torch.zeros(L, width, dtype=torch.float64)
    count = 0
    for start, stop in _batches(len(questions), batch_size):
        inputs, writes = _teacher_forced(processor, list(images[start:stop]), list(questions[start:stop]),
                                         completions[start:stop], device)  # fmt: skip
        acts = []
        for model in (sft, aligned):
            with record_mlp(model) as rec:
                model(**inputs, use_cache=False)
            acts.append(torch.stack([rec[layer][0] for layer in range(L)]))  # [L, B, T, I]
        diff = (acts[1] - acts[0])[:, writes]  # [L, n, I]
        total += diff.double().square().sum(1).cpu()
        count += int(writes.sum())
    return (total / max(count, 1)).sqrt().float()


def top_neurons(scores: torch.Tensor, k: int) -> Selection:
    """The ``k`` neurons with the highest scores over all layers.

    Args:
        scores: ``[L, I]`` (:func:`change_scores`).

    Returns:
        layer -> sorted ``LongTensor`` of its chosen neurons; every layer present (maybe empty).
    """
    L, width = scores.shape
    if not 0 <= k <= L * width:
        raise ValueError(f"k must be in 0..{L * width}, got {k}")
    flat = torch.topk(scores.flatten().float(), k).indices if k else torch.zeros(0, dtype=torch.long)
    return {layer: torch.sort(flat[flat // width == layer] % width).values for layer in range(L)}


def random_neurons_like(selection: Selection, num_neurons: int, generator: torch.Generator) -> Selection:
    """Random neurons, as many per layer as ``selection`` has (the patching control).

    Args:
        num_neurons: neurons per layer ``I``.
        generator: the draw's random generator.

    Returns:
        layer -> sorted ``LongTensor`` of distinct indices, ``len`` equal to ``selection[layer]``'s.
    """
    return {
        layer: torch.sort(torch.randperm(num_neurons, generator=generator)[: idx.numel()]).values
        for layer, idx in selection.items()
    }


def restored_share(patched: float, sft: float, aligned: float) -> float:
    """Share of the gap closed: ``(patched - sft) / (aligned - sft)`` (NaN when there is no gap)."""
    gap = aligned - sft
    return float("nan") if abs(gap) < 1e-12 else (patched - sft) / gap


@torch.no_grad()
def last_prompt_neurons(model, processor, images, questions, *, batch_size: int = 64) -> torch.Tensor:
    """Every MLP neuron of ``model`` at the last prompt token (where the answer starts).

    Returns:
        ``[N, L, I]`` float32.
    """
    return at_last_prompt_token(model, processor, images, questions, record=record_mlp, batch_size=batch_size)


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > that of a random negative), ties half.

    Args:
        scores: ``[N]`` real scores; labels: ``[N]`` 0/1.

    Returns:
        The AUC (NaN when one class is missing).
    """
    s, y = scores.double().flatten(), labels.bool().flatten()
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _features(acts: torch.Tensor, selection: Selection) -> torch.Tensor:
    """``[N, k]`` the selected neurons' columns of ``acts [N, L, I]``."""
    cols = [acts[:, layer, idx] for layer, idx in sorted(selection.items()) if idx.numel()]
    return torch.cat(cols, dim=1) if cols else acts.new_zeros(acts.shape[0], 0)


def safeguard_auc(
    train_acts: torch.Tensor, train_y: torch.Tensor, test_acts: torch.Tensor, test_y: torch.Tensor, selection: Selection
) -> float:
    """Held-out AUC of a logistic regression on the selected neurons at the last prompt token.

    Args:
        train_acts, test_acts: ``[N, L, I]`` (:func:`last_prompt_neurons`); train_y, test_y: ``[N]``
            1 = the answer to that prompt is unsafe.
        selection: the neurons read (:func:`top_neurons`).
    """
    score = fit_logistic(_features(train_acts, selection), train_y)
    return roc_auc(score(_features(test_acts, selection)), test_y)


def overlap(a: Selection, b: Selection, total: int) -> dict[str, float]:
    """How much two neuron sets of the same size share, against two random sets of that size.

    Args:
        total: the number of neurons they are drawn from (``L * I``).

    Returns:
        ``shared`` (neurons in both), ``share`` (of ``a``'s neurons also in ``b``), ``jaccard``,
        ``chance_share`` (``|b| / total``: the expected share for random sets), ``chance_jaccard``
        (expected intersection over expected union for random sets) and ``enrichment``
        (``share / chance_share``).
    """
    sa = {(layer, int(i)) for layer, idx in a.items() for i in idx}
    sb = {(layer, int(i)) for layer, idx in b.items() for i in idx}
    inter = len(sa & sb)
    chance_share = len(sb) / total
    expected = len(sa) * len(sb) / total
    share = inter / len(sa) if sa else float("nan")
    return {
        "shared": inter,
        "share": round(share, 4),
        "jaccard": round(inter / len(sa | sb), 4) if sa | sb else float("nan"),
        "chance_share": round(chance_share, 4),
        "chance_jaccard": round(expected / (len(sa) + len(sb) - expected), 4) if sa or sb else float("nan"),
        "enrichment": round(share / chance_share, 3) if chance_share else float("nan"),
    }


# --- the stage -------------------------------------------------------------------------------------------


def _safety(contexts: list[str], answers: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """Oracle harmless rate (harmless >= 0) of the answers, and the verdicts."""
    from saferlhfv.evaluate import judge_samples

    judged = judge_samples(contexts, answers)
    return sum(j["harmless"] >= 0 for j in judged) / max(len(judged), 1), judged


def _subset(ds, harmful: bool, limit: int):
    rows = [i for i, h in enumerate(ds["is_harmful"]) if bool(h) == harmful]
    return ds.select(rows[: limit if limit > 0 else len(rows)])


def run_safety_neurons(
    cfg, folder: str | Path, *, sft_dir: str | Path, aligned_dir: str | Path, reward_only_dir: str | Path
) -> dict[str, Any]:
    """The ``safety_neurons`` stage: change scores, patching curves, the safeguard and the overlap.

    * Safety neurons: change scores between the precursor (``sft_dir``) and PPO-Lagrangian
      (``aligned_dir``) on the precursor's greedy answers to harmful *training* prompts
      (``neurons.score_prompts`` of them).
    * Patching: greedy answers to the harmful *held-out* prompts with the top ``f`` share of the
      neurons (each of ``neurons.fractions``) patched, and ``neurons.random_repeats`` draws of random
      neurons of the same count per layer; safety = oracle harmless rate; also all neurons (the
      method's ceiling on this model: PPO changed attention too).
    * Safeguard: label = the precursor's greedy answer is unsafe; logistic regression on the top-k
      safety neurons (each of ``neurons.safeguard_neurons``) at the last prompt token, fitted on all
      training prompts, AUC on all held-out prompts; random neurons of the same count per layer as
      the control, and every neuron.
    * Helpfulness neurons: change scores between the precursor and reward-only PPO
      (``reward_only_dir``) on its greedy answers to benign training prompts; overlap with the
      safety neurons at each fraction.

    Writes ``folder/change_scores.pt`` (``{"safety": [L, I], "helpfulness": [L, I]}``) and
    ``folder/answers.json`` (held-out harmful prompts: the precursor's, the aligned policy's and the
    patched answers at the fraction closest to 5 %, with the oracle's verdicts).

    Returns:
        A JSON-serialisable dict (see the keys below; ``seconds`` the build's time).
    """
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.models.factory import load_saved_vlm, quiet_loading

    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nc = cfg.neurons
    new = nc.max_new_tokens
    with quiet_loading():
        sft, processor = load_saved_vlm(Path(sft_dir) / "model", dtype=cfg.model.dtype)
        aligned, _ = load_saved_vlm(Path(aligned_dir) / "model", dtype=cfg.model.dtype)
        reward_only, _ = load_saved_vlm(Path(reward_only_dir) / "model", dtype=cfg.model.dtype)
    L, width = num_layers(sft), num_neurons(sft)
    total = L * width
    train, test = rl_prompts(cfg.data, "train"), rl_prompts(cfg.data, "evaluation")
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    # the precursor's greedy answers to every training prompt: completions to score on, safeguard labels
    t = time.perf_counter()
    train_answers, train_tokens = greedy_tokens(sft, processor, list(train["image"]), list(train["question"]),
                                                max_new_tokens=new)  # fmt: skip
    _, train_judged = _safety(list(train["context"]), train_answers)
    t = tick("precursor_train_answers", t)

    def scores_on(model, harmful: bool, limit: int) -> tuple[torch.Tensor, int]:
        rows = [i for i, h in enumerate(train["is_harmful"]) if bool(h) == harmful]
        rows = rows[: limit if limit > 0 else len(rows)]
        sub = train.select(rows)
        return change_scores(sft, model, processor, list(sub["image"]), list(sub["question"]),
                             [train_tokens[i] for i in rows]), len(rows)  # fmt: skip

    safety_scores, n_score = scores_on(aligned, True, nc.score_prompts)
    help_scores, n_help = scores_on(reward_only, False, nc.score_prompts)
    torch.save({"safety": safety_scores, "helpfulness": help_scores}, folder / CHANGE_SCORES)
    t = tick("change_scores", t)

    # patching on the held-out harmful prompts
    harmful = _subset(test, True, nc.patch_prompts)
    h_images, h_questions, h_contexts = list(harmful["image"]), list(harmful["question"]), list(harmful["context"])

    def safety_with(selection: Selection) -> tuple[float, list[str], list[dict[str, Any]]]:
        answers = patched_generate(sft, aligned, processor, h_images, h_questions, selection, max_new_tokens=new)
        rate, judged = _safety(h_contexts, answers)
        return rate, answers, judged

    s_sft, a_sft, j_sft = safety_with({})
    s_aligned, a_aligned, j_aligned = _safety_of(aligned, processor, h_images, h_questions, h_contexts, new)
    s_all, _, _ = safety_with({layer: torch.arange(width) for layer in range(L)})
    gen = torch.Generator().manual_seed(cfg.seed)
    curves: dict[str, list] = {"fractions": [], "k": [], "top": [], "random": [], "random_draws": [],
                               "top_restored": [], "random_restored": [], "top_per_layer": []}  # fmt: skip
    near5 = min(nc.fractions, key=lambda f: abs(f - 0.05)) if nc.fractions else None
    example: dict[str, Any] = {}
    for f in nc.fractions:
        k = max(1, round(f * total))
        top = top_neurons(safety_scores, k)
        s_top, a_top, j_top = safety_with(top)
        draws = []
        for r in range(nc.random_repeats):
            s_rand, a_rand, j_rand = safety_with(random_neurons_like(top, width, gen))
            draws.append(s_rand)
            if f == near5 and r == 0:
                example["random"] = (a_rand, j_rand)
        if f == near5:
            example["top"] = (a_top, j_top)
        s_rand_mean = sum(draws) / len(draws) if draws else float("nan")
        curves["fractions"].append(f)
        curves["k"].append(k)
        curves["top"].append(round(s_top, 4))
        curves["random"].append(round(s_rand_mean, 4))
        curves["random_draws"].append([round(s, 4) for s in draws])
        curves["top_restored"].append(round(restored_share(s_top, s_sft, s_aligned), 4))
        curves["random_restored"].append(round(restored_share(s_rand_mean, s_sft, s_aligned), 4))
        curves["top_per_layer"].append([int(top[layer].numel()) for layer in range(L)])
    t = tick("patching", t)

    rows = []
    for i, q in enumerate(h_questions):
        row = {"question": q, "context": h_contexts[i],
               "precursor": a_sft[i], "precursor_harmless": j_sft[i]["harmless"],
               "aligned": a_aligned[i], "aligned_harmless": j_aligned[i]["harmless"]}  # fmt: skip
        for name, (answers, judged) in example.items():
            row[f"patched_{name}"] = answers[i]
            row[f"patched_{name}_harmless"] = judged[i]["harmless"]
        rows.append(row)
    (folder / ANSWERS).write_text(json.dumps({"fraction": near5, "rows": rows}, indent=1))

    # the pre-generation safeguard
    test_answers = patched_generate(sft, None, processor, list(test["image"]), list(test["question"]), {},
                                    max_new_tokens=new)  # fmt: skip
    _, test_judged = _safety(list(test["context"]), test_answers)
    y_train = torch.tensor([float(j["harmless"] < 0) for j in train_judged])
    y_test = torch.tensor([float(j["harmless"] < 0) for j in test_judged])
    x_train = last_prompt_neurons(sft, processor, list(train["image"]), list(train["question"]))
    x_test = last_prompt_neurons(sft, processor, list(test["image"]), list(test["question"]))
    guard: dict[str, list] = {"k": [], "top": [], "random": []}
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for k in nc.safeguard_neurons:
        if k > total:
            continue
        top = top_neurons(safety_scores, k)
        guard["k"].append(k)
        guard["top"].append(round(safeguard_auc(x_train, y_train, x_test, y_test, top), 4))
        rand = [safeguard_auc(x_train, y_train, x_test, y_test, random_neurons_like(top, width, gen))
                for _ in range(nc.random_repeats)]  # fmt: skip
        guard["random"].append(round(sum(rand) / len(rand), 4) if rand else float("nan"))
    every = {layer: torch.arange(width) for layer in range(L)}
    is_harmful = torch.tensor([float(bool(h)) for h in test["is_harmful"]])
    guard.update({
        "all_neurons": round(safeguard_auc(x_train, y_train, x_test, y_test, every), 4),
        "harmful_prompt_as_score": round(roc_auc(is_harmful, y_test), 4),
        "unsafe_share_train": round(float(y_train.mean()), 4),
        "unsafe_share_test": round(float(y_test.mean()), 4),
        "n_train": len(y_train),
        "n_test": len(y_test),
    })  # fmt: skip
    t = tick("safeguard", t)

    # safety vs helpfulness neurons
    ov: dict[str, list] = {"fractions": [], "k": [], "share": [], "jaccard": [], "chance_share": [],
                           "chance_jaccard": [], "enrichment": []}  # fmt: skip
    for f in nc.fractions:
        k = max(1, round(f * total))
        o = overlap(top_neurons(safety_scores, k), top_neurons(help_scores, k), total)
        ov["fractions"].append(f)
        ov["k"].append(k)
        for key in ("share", "jaccard", "chance_share", "chance_jaccard", "enrichment"):
            ov[key].append(o[key])
    rank_corr = float(torch.corrcoef(torch.stack([_ranks(safety_scores), _ranks(help_scores)]))[0, 1])
    ov["spearman"] = round(rank_corr, 4)

    at5 = curves["fractions"].index(near5) if near5 is not None else None
    best = max(range(len(guard["top"])), key=guard["top"].__getitem__) if guard["top"] else None
    best_auc = guard["top"][best] if best is not None else float("nan")
    headline = {
        "fraction": near5,
        "top_restored": curves["top_restored"][at5] if at5 is not None else float("nan"),
        "random_restored": curves["random_restored"][at5] if at5 is not None else float("nan"),
        "all_restored": round(restored_share(s_all, s_sft, s_aligned), 4),
        "safeguard_auc": best_auc,
        "safeguard_k": guard["k"][best] if best is not None else None,
        "safeguard_random_auc": guard["random"][best] if best is not None else float("nan"),
    }
    # the share of what patching can restore at all on this model (PPO changed attention too)
    headline["top_restored_of_ceiling"] = round(headline["top_restored"] / headline["all_restored"], 4)
    headline["targets_met"] = {
        "top_restored >= 0.8": bool(headline["top_restored"] >= 0.8),
        "random_restored <= 0.3": bool(headline["random_restored"] <= 0.3),
        "safeguard_auc >= 0.85": bool(best_auc >= 0.85),
    }
    return {
        "layers": L,
        "neurons_per_layer": width,
        "neurons": total,
        "score_prompts": n_score,
        "helpfulness_prompts": n_help,
        "patch_prompts": len(h_questions),
        "safety": {"precursor": round(s_sft, 4), "aligned": round(s_aligned, 4), "all_neurons": round(s_all, 4)},
        "headline": headline,
        "patching": curves,
        "safeguard": guard,
        "overlap": ov,
        "score_stats": {
            # share of the summed squared change scores held by the top 1 % / 5 % of neurons
            "safety_top1pct_energy": _energy(safety_scores, 0.01),
            "safety_top5pct_energy": _energy(safety_scores, 0.05),
            "helpfulness_top5pct_energy": _energy(help_scores, 0.05),
            "safety_by_layer": [round(float(v), 4) for v in safety_scores.mean(1)],
            "helpfulness_by_layer": [round(float(v), 4) for v in help_scores.mean(1)],
        },  # fmt: skip
        "timings": timings,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _safety_of(model, processor, images, questions, contexts, max_new_tokens):
    answers = patched_generate(model, None, processor, images, questions, {}, max_new_tokens=max_new_tokens)
    rate, judged = _safety(contexts, answers)
    return rate, answers, judged


def _energy(scores: torch.Tensor, fraction: float) -> float:
    sq = scores.flatten().double().square()
    return round(float(sq.topk(max(1, round(fraction * sq.numel()))).values.sum() / sq.sum()), 4)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    flat = scores.flatten().double()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort()] = torch.arange(len(flat), dtype=torch.float64)
    return ranks


# --- figures ---------------------------------------------------------------------------------------------


def _log_ticks(ax, values) -> None:
    """A log x axis labelled at the measured values."""
    ax.set_xscale("log")
    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.minorticks_off()


def plot_change_scores(scores: dict[str, torch.Tensor], *, fraction: float = 0.05):
    """Sorted change scores of each set (log scale), the top ``fraction`` marked; and per layer its share
    of the top ``fraction`` neurons.

    Args:
        scores: name -> ``[L, I]`` change scores (``safety``, ``helpfulness``).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    for name, s in scores.items():
        flat = s.flatten().sort(descending=True).values
        axes[0].plot(torch.arange(1, len(flat) + 1) / len(flat) * 100, flat, label=name)
        k = max(1, round(fraction * s.numel()))
        per_layer = [int(v.numel()) for v in top_neurons(s, k).values()]
        axes[1].plot(range(len(per_layer)), [c / k for c in per_layer], "o-", label=f"{name}: top {fraction:.0%}")
    axes[0].axvline(fraction * 100, color="k", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("neurons, ranked by change score (%)")
    axes[0].set_ylabel("change score (RMS of a_aligned - a_SFT)")
    axes[1].set_xticks(range(next(iter(scores.values())).shape[0]))
    axes[1].set_xlabel("decoder layer")
    axes[1].set_ylabel("share of the top neurons")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_patching_curves(metrics: dict[str, Any], *, paper: tuple[float, float] | None = (5.0, 0.9)):
    """Restored share of the safety gap against the percentage of neurons patched: top by change score
    and random (each draw a dot), the all-neuron ceiling, the paper's claim.

    Args:
        metrics: the ``safety_neurons`` stage's result.
        paper: ``(percent, restored share)`` of the paper's headline, or None.
    """
    import matplotlib.pyplot as plt

    p, s = metrics["patching"], metrics["safety"]
    pct = [f * 100 for f in p["fractions"]]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    ax.plot(pct, p["top_restored"], "o-", color="tab:red", label="top neurons by change score")
    ax.plot(pct, p["random_restored"], "s--", color="tab:grey", label="random neurons, same count per layer (mean)")
    for x, draws in zip(pct, p["random_draws"]):
        ax.scatter([x] * len(draws), [restored_share(d, s["precursor"], s["aligned"]) for d in draws], s=10,
                   color="tab:grey", alpha=0.5)  # fmt: skip
    ax.axhline(metrics["headline"]["all_restored"], color="tab:blue", ls=":",
               label=f"all neurons patched: {metrics['headline']['all_restored']:.2f}")  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    if paper is not None:
        ax.scatter([paper[0]], [paper[1]], marker="*", s=160, color="k", label="paper: ~5 % of neurons, > 90 %")
    _log_ticks(ax, pct)
    ax.set_xlabel("neurons patched (% of all MLP neurons)")
    ax.set_ylabel("restored share of the safety gap")
    ax.set_title(f"harmful held-out prompts: precursor {s['precursor']:.2f}, aligned {s['aligned']:.2f} safe",
                 fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_safeguard_auc(metrics: dict[str, Any]):
    """The pre-generation safeguard's held-out AUC against the number of neurons it reads."""
    import matplotlib.pyplot as plt

    g = metrics["safeguard"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(g["k"], g["top"], "o-", color="tab:red", label="top safety neurons")
    ax.plot(g["k"], g["random"], "s--", color="tab:grey", label="random neurons (mean)")
    ax.axhline(g["all_neurons"], color="tab:blue", ls=":", label=f"all {metrics['neurons']} neurons")
    ax.axhline(g["harmful_prompt_as_score"], color="tab:green", ls="-.",
               label="the prompt's true harmful label as the score")  # fmt: skip
    ax.axhline(0.85, color="k", lw=0.8, ls="--", label="target 0.85")
    _log_ticks(ax, g["k"])
    ax.set_xlabel("neurons read at the last prompt token")
    ax.set_ylabel("held-out AUC (unsafe answer)")
    ax.set_ylim(0.45, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_overlap(metrics: dict[str, Any]):
    """Share of the top safety neurons that are also top helpfulness neurons, against chance, per fraction."""
    import matplotlib.pyplot as plt

    o = metrics["overlap"]
    pct = [f * 100 for f in o["fractions"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(pct, o["share"], "o-", color="tab:purple", label="safety neurons that are also helpfulness neurons")
    ax.plot(pct, o["jaccard"], "^-", color="tab:orange", label="Jaccard index of the two sets")
    ax.plot(pct, o["chance_share"], "k--", lw=1, label="chance (random sets): share")
    ax.plot(pct, o["chance_jaccard"], "k:", lw=1, label="chance (random sets): Jaccard")
    _log_ticks(ax, pct)
    ax.set_xlabel("top neurons of each set (% of all MLP neurons)")
    ax.set_ylabel("overlap")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
