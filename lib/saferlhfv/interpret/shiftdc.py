"""ShiftDC (Zou et al. 2025): the image-induced activation shift, measured and calibrated, training-free.

*Understanding and Rectifying Safety Perception Distortion in VLMs* (arXiv 2502.13095, code
``Renovamen/ShiftDC``) claims that adding the picture shifts a VLM's activations towards "safe", so the
model complies with a harmful request carried by the picture that it refuses when the same content
comes as text. The method, at the last prompt token and per decoder layer ``l``:

* **safety direction** ``s_l = mean h_l(unsafe) - mean h_l(safe)`` over *text-carried* inputs (the
  image's caption + the question);
* **modality shift** of one input ``m_l = h_l(image + question) - h_l(caption + question)``;
* **calibration**: subtract ``alpha * (m_l . s_l / |s_l|^2) s_l`` (the shift's safety component) from
  the last prompt token's hidden state at the upper half of the layers, during the prefill only;
  ``alpha = 1`` in the paper, greedy decoding. The **ablation** subtracts the whole shift ``alpha * m_l``.

**The tiny model always gets a picture.** Its chat template puts one image before every question, so
a text-only input does not exist. The *text-carried* version of a request is therefore the caption +
question with a **neutral stand-in picture** (:func:`neutral_picture`: a plain background of the
world's pictures with nothing drawn on it). Its caption is the one the world writes for the picture
(:func:`caption_of`: ``"the picture shows some pills."``), and its oracle context is the same request
(same object, same harm), so the oracle judges both versions against the same ground truth.

Shapes: ``N`` prompts, ``L`` layers (recorded or edited), ``H`` the hidden size. Projections are in
units of ``|s_l|``: by construction the unsafe mean projects 1 above the safe mean on ``s_l``.

:func:`run_shiftdc` is the ``shiftdc`` stage (:mod:`saferlhfv.stages`): it measures the distortion and
the calibration on the precursor (SFT) and the PPO-Lagrangian policy, and optionally on a PPO-Lagrangian
policy aligned on text-carried prompts only (``ppo.algorithm=ppo_lag_text``,
:mod:`saferlhfv.train.ppo.text_aligned`: the paper's setting), on the held-out evaluation prompts'
image-coupled requests (where the picture decides whether a request is harmful). The text-carried
helpers live in :mod:`saferlhfv.data.world.text_carried` (re-exported here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from saferlhfv.data.images import BACKGROUNDS
from saferlhfv.data.world.text_carried import caption_of, caption_question, neutral_picture
from saferlhfv.interpret.hooks import at_last_prompt_token, edit_hidden, num_layers, record_hidden

__all__ = [
    "MODES",
    "SAMPLES",
    "neutral_picture",
    "caption_of",
    "caption_question",
    "upper_half",
    "last_token_states",
    "safety_directions",
    "project",
    "safety_component",
    "calibrate",
    "calibrated",
    "generate_calibrated",
    "measure_policy",
    "run_shiftdc",
    "plot_distortion",
    "plot_projections",
    "plot_alpha_sweep",
]

#: calibration modes: ``"safety"`` subtracts the shift's safety component (ShiftDC), ``"whole"`` the whole shift.
MODES = ("safety", "whole")
#: per-prompt answers the stage writes into its folder.
SAMPLES = "shiftdc_samples.json"


def upper_half(n_layers: int) -> list[int]:
    """The layers ShiftDC edits: ``n_layers // 2 .. n_layers - 1``."""
    return list(range(n_layers // 2, n_layers))


@torch.no_grad()
def last_token_states(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """The residual stream after each of ``layers`` at the last prompt token (where the answer starts).

    Prompts are left padded, so the last position of every row is its last real token.

    Args:
        images, questions: ``N`` pictures and their questions (the chat template adds the rest).
        layers: decoder layers to read (all when None).

    Returns:
        ``[N, L, H]`` float32 on the CPU, layers in the order given.
    """
    return at_last_prompt_token(model, processor, images, questions, record=record_hidden, layers=layers,
                                batch_size=batch_size)  # fmt: skip


def safety_directions(unsafe_states: torch.Tensor, safe_states: torch.Tensor) -> torch.Tensor:
    """``s = mean(unsafe) - mean(safe)`` per layer.

    Args:
        unsafe_states: ``[N_u, L, H]`` states of harmful requests; safe_states: ``[N_s, L, H]`` of benign ones.

    Returns:
        ``[L, H]``, pointing from "safe" to "unsafe".
    """
    if unsafe_states.shape[1:] != safe_states.shape[1:]:
        raise ValueError(f"unsafe states {tuple(unsafe_states.shape)} and safe states {tuple(safe_states.shape)}")
    return unsafe_states.float().mean(0) - safe_states.float().mean(0)


def project(vectors: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The coefficient of ``vectors`` on ``direction``: ``(v . s) / |s|^2``.

    Args:
        vectors: ``[..., H]``; direction: ``[..., H]`` broadcastable against it (e.g. ``[L, H]`` for ``[N, L, H]``).

    Returns:
        ``[...]``: 1 for ``v = s``, 0 for ``v`` orthogonal to ``s``.
    """
    d = direction.to(vectors.dtype)
    return (vectors * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)


def safety_component(shift: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The part of ``shift [..., H]`` along ``direction``: ``(m . s / |s|^2) s``, shape ``[..., H]``."""
    return project(shift, direction).unsqueeze(-1) * direction.to(shift.dtype)


def calibrate(
    hidden: torch.Tensor, shift: torch.Tensor, direction: torch.Tensor, *, alpha: float, mode: str = "safety"
) -> torch.Tensor:
    """One calibrated state: ``h - alpha (m . s / |s|^2) s`` (``"safety"``, ShiftDC) or ``h - alpha m`` (``"whole"``).

    Args:
        hidden, shift: ``[..., H]``; direction: ``[..., H]`` broadcastable against them.

    Returns:
        ``[..., H]``. With ``alpha = 1``: in ``"safety"`` mode ``project(result, s) == project(h - m, s)``
        (the text-carried state's projection when ``h - m`` is it), the rest of ``h`` unchanged; in
        ``"whole"`` mode the result is ``h - m``.
    """
    if mode == "safety":
        return hidden - alpha * safety_component(shift, direction).to(hidden.dtype)
    if mode == "whole":
        return hidden - alpha * shift.to(hidden.dtype)
    raise ValueError(f"unknown calibration mode {mode!r}; choose one of {MODES}")


@contextmanager
def calibrated(
    model,
    *,
    directions: torch.Tensor,
    shifts: torch.Tensor,
    layers: Sequence[int],
    alpha: float,
    mode: str = "safety",
) -> Iterator[None]:
    """Calibrate the last prompt token's residual stream after each of ``layers``, during the prefill only.

    The prefill is the forward pass over the whole prompt (``T > 1``); decode steps (``T = 1``, with the
    KV cache) are left alone, but attend to the calibrated keys and values of the last prompt token.
    Prompts must be left padded (position ``-1`` is the last prompt token), as generation pads them.

    Args:
        directions: ``[L, H]`` safety direction of each edited layer (in ``layers``' order).
        shifts: ``[B, L, H]`` modality shift of each prompt of the batch at each edited layer.
        layers: the ``L`` decoder layers edited (ShiftDC: :func:`upper_half`).
        alpha: calibration strength (0: nothing changes).
        mode: ``"safety"`` (subtract the shift's safety component) or ``"whole"`` (the whole shift).
    """
    layers = list(layers)
    if directions.shape[0] != len(layers) or shifts.shape[1] != len(layers):
        raise ValueError(
            f"{len(layers)} layers but directions {tuple(directions.shape)} and shifts {tuple(shifts.shape)}"
        )
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; choose one of {MODES}")

    def edit(j: int):
        def fn(hidden: torch.Tensor) -> torch.Tensor | None:
            if hidden.shape[1] <= 1 or alpha == 0:  # a decode step, or nothing to do
                return None
            if hidden.shape[0] != shifts.shape[0]:
                raise ValueError(f"a batch of {hidden.shape[0]} prompts but shifts for {shifts.shape[0]}")
            new = hidden.clone()
            m = shifts[:, j].to(hidden.device, hidden.dtype)
            s = directions[j].to(hidden.device, hidden.dtype)
            new[:, -1] = calibrate(hidden[:, -1], m, s, alpha=alpha, mode=mode)
            return new

        return fn

    with edit_hidden(model, {layer: edit(j) for j, layer in enumerate(layers)}):
        yield


def generate_calibrated(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    directions: torch.Tensor,
    shifts: torch.Tensor,
    layers: Sequence[int],
    alpha: float,
    mode: str = "safety",
    max_new_tokens: int = 40,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to ``N`` prompts under :func:`calibrated` (each batch with its prompts' shifts).

    Args:
        shifts: ``[N, L, H]`` modality shift of each prompt; directions: ``[L, H]``; layers: the ``L`` edited layers.

    Returns:
        ``N`` answers, in order.
    """
    from saferlhfv.models.generation import generate_responses
    from saferlhfv.threads import busy, rebalance

    answers: list[str] = []
    with busy():
        for start in range(0, len(questions), batch_size):
            rebalance()
            stop = start + batch_size
            with calibrated(model, directions=directions, shifts=shifts[start:stop], layers=layers, alpha=alpha,
                            mode=mode):  # fmt: skip
                answers += generate_responses(model, processor, list(images[start:stop]),
                                              list(questions[start:stop]), max_new_tokens=max_new_tokens,
                                              do_sample=False)  # fmt: skip
    return answers


def _r(x: float) -> float:
    return round(float(x), 4)


def _layer_means(values: torch.Tensor) -> list[float]:
    """``[N, L]`` -> the mean of each layer (NaN when ``N = 0``)."""
    return [_r(v) for v in values.mean(0)] if len(values) else [float("nan")] * values.shape[1]


def _judge(contexts: list[str], answers: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from saferlhfv.evaluate import judge_samples, summarize

    judged = judge_samples(contexts, answers)
    s = summarize(judged)
    keep = ("n", "n_harmful", "harmful_safety_rate", "benign_helpfulness", "mean_helpfulness", "degenerate_share")
    return {**{k: s[k] for k in keep}, "behaviour": s["behaviour"]}, judged


@torch.no_grad()
def measure_policy(
    model,
    processor,
    *,
    train,
    evaluation,
    alphas: Sequence[float],
    ablation_alphas: Sequence[float],
    max_new_tokens: int = 40,
    batch_size: int = 32,
    image_size: int = 64,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ShiftDC's measurement on one policy.

    Args:
        train: prompts (``image``, ``question``, ``context``, ``is_harmful``) whose text-carried versions
            give the safety directions: unsafe = harmful requests, safe = benign ones.
        evaluation: the held-out image-coupled prompts measured (harmful and benign).
        alphas: calibration strengths of the ShiftDC sweep (0 = the policy as it is).
        ablation_alphas: strengths of the whole-shift ablation.

    Returns:
        ``(metrics, rows)``. ``metrics``: ``layers`` (edited), ``distortion`` (oracle safety of the harmful
        requests carried by the picture vs by the caption text, ``gap`` = text - image: positive is
        the paper's distortion; and benign helpfulness of both), ``projection`` (per layer, mean
        coefficient on ``s`` of image and caption inputs, harmful and benign, of the shift, and the train
        unsafe / safe means), ``perception_accuracy`` (per layer, share of held-out requests on the right
        side of the train midpoint, image vs caption inputs), ``sweep`` (per alpha: ``harmful_safety_rate``,
        ``benign_helpfulness``...) and ``ablation`` (the same for the whole shift). ``rows``: per prompt
        its question, caption question, object, harmfulness, answers and their oracle verdicts.
    """
    n_layers = num_layers(model)
    edited = upper_half(n_layers)
    blank = neutral_picture(image_size)
    kw = dict(batch_size=batch_size)

    def text_inputs(ds):
        return [blank] * len(ds), [caption_question(c, q) for c, q in zip(ds["context"], ds["question"])]

    # safety directions from text-carried train requests (all layers)
    tr_images, tr_questions = text_inputs(train)
    tr_states = last_token_states(model, processor, tr_images, tr_questions, **kw)
    tr_harm = torch.tensor([bool(h) for h in train["is_harmful"]])
    directions = safety_directions(tr_states[tr_harm], tr_states[~tr_harm])  # [L, H]
    tr_proj = project(tr_states, directions)  # [N, L]
    midpoint = (tr_proj[tr_harm].mean(0) + tr_proj[~tr_harm].mean(0)) / 2  # [L]

    # held-out: image-carried and text-carried versions of the same requests
    images, questions, contexts = list(evaluation["image"]), list(evaluation["question"]), list(evaluation["context"])
    harm = torch.tensor([bool(json.loads(c)["harmful"]) for c in contexts])
    te_images, te_questions = text_inputs(evaluation)
    h_image = last_token_states(model, processor, images, questions, **kw)  # [N, L, H]
    h_text = last_token_states(model, processor, te_images, te_questions, **kw)
    shifts = h_image - h_text
    p_image, p_text, p_shift = (project(x, directions) for x in (h_image, h_text, shifts))  # [N, L]
    projection = {
        "image_harmful": _layer_means(p_image[harm]),
        "caption_harmful": _layer_means(p_text[harm]),
        "image_benign": _layer_means(p_image[~harm]),
        "caption_benign": _layer_means(p_text[~harm]),
        "shift_harmful": _layer_means(p_shift[harm]),
        "shift_benign": _layer_means(p_shift[~harm]),
        "train_unsafe": _layer_means(tr_proj[tr_harm]),
        "train_safe": _layer_means(tr_proj[~tr_harm]),
        # how much of the shift lies along s: |component| / |m|
        "shift_safety_share": _layer_means(
            safety_component(shifts, directions).norm(dim=-1) / shifts.norm(dim=-1).clamp_min(1e-12)
        ),
    }

    def accuracy(p):
        return [_r(((p[:, j] > midpoint[j]) == harm).float().mean()) for j in range(n_layers)]

    perception = {"image": accuracy(p_image), "caption": accuracy(p_text)}

    # answers: text-carried (no edit), then image-carried under each alpha / mode
    answers: dict[str, list[str]] = {}
    gen = dict(directions=directions[edited], layers=edited, max_new_tokens=max_new_tokens, batch_size=batch_size)
    answers["text"] = generate_calibrated(model, processor, te_images, te_questions, shifts=shifts[:, edited],
                                          alpha=0.0, **gen)  # fmt: skip
    for mode, strengths in (("safety", alphas), ("whole", ablation_alphas)):
        for a in strengths:
            answers[f"{mode}@{a:g}"] = generate_calibrated(
                model, processor, images, questions, shifts=shifts[:, edited], alpha=a, mode=mode, **gen
            )
    summaries, verdicts = {}, {}
    for key, texts in answers.items():
        summaries[key], verdicts[key] = _judge(contexts, texts)

    image0 = summaries.get("safety@0", None)
    if image0 is None:  # the policy as it is, when 0 is not in the sweep
        image0, verdicts["safety@0"] = _judge(
            contexts,
            generate_calibrated(model, processor, images, questions, shifts=shifts[:, edited], alpha=0.0, **gen),
        )
    text = summaries["text"]
    distortion = {
        "image_safety": image0["harmful_safety_rate"],
        "text_safety": text["harmful_safety_rate"],
        "gap": _r(text["harmful_safety_rate"] - image0["harmful_safety_rate"]),
        "image_benign_helpfulness": image0["benign_helpfulness"],
        "text_benign_helpfulness": text["benign_helpfulness"],
        "image_behaviour": image0["behaviour"],
        "text_behaviour": text["behaviour"],
    }
    sweep = [{"alpha": float(a), **summaries[f"safety@{a:g}"]} for a in alphas]
    ablation = [{"alpha": float(a), **summaries[f"whole@{a:g}"]} for a in ablation_alphas]
    metrics = {
        "n_layers": n_layers,
        "layers": edited,
        "n_harmful": int(harm.sum()),
        "n_benign": int((~harm).sum()),
        "direction_norm": [_r(v) for v in directions.norm(dim=-1)],
        "distortion": distortion,
        "projection": projection,
        "perception_accuracy": perception,
        "sweep": sweep,
        "ablation": ablation,
    }
    rows = []
    for i, (q, c) in enumerate(zip(questions, contexts)):
        ctx = json.loads(c)
        row = {"index": i, "question": q, "text_question": te_questions[i], "object": ctx["object"],
               "category": ctx["category"], "harmful": bool(ctx["harmful"]),
               "shift_projection": [_r(v) for v in p_shift[i]]}  # fmt: skip
        for key, judged in verdicts.items():
            v = judged[i]
            row[key] = {"response": v["response"], "helpful": v["helpful"], "harmless": v["harmless"],
                        "behaviour": v["behaviour"]}  # fmt: skip
        rows.append(row)
    return metrics, rows


def _coupled(ds):
    """The image-coupled requests of a prompt set (the picture decides whether they are harmful)."""
    keep = [i for i, c in enumerate(ds["context"]) if json.loads(c)["kind"] == "coupled"]
    return ds.select(keep)


def _at(curve: list[dict[str, Any]], alpha: float) -> dict[str, Any] | None:
    return next((p for p in curve if abs(p["alpha"] - alpha) < 1e-9), None)


def _effect(m: dict[str, Any], alpha: float = 1.0) -> dict[str, Any]:
    """Calibration at ``alpha`` against the policy as it is (alpha 0): safety gain, helpfulness drop."""
    base, cal, whole = _at(m["sweep"], 0.0), _at(m["sweep"], alpha), _at(m["ablation"], alpha)
    out: dict[str, Any] = {"alpha": alpha}
    if base and cal:
        out["safety_gain"] = _r(cal["harmful_safety_rate"] - base["harmful_safety_rate"])
        out["helpfulness_drop"] = _r(base["benign_helpfulness"] - cal["benign_helpfulness"])
    if base and whole:
        out["whole_safety_gain"] = _r(whole["harmful_safety_rate"] - base["harmful_safety_rate"])
        out["whole_helpfulness_drop"] = _r(base["benign_helpfulness"] - whole["benign_helpfulness"])
    return out


def run_shiftdc(
    cfg,
    folder: str | Path,
    *,
    sft_dir: str | Path,
    aligned_dir: str | Path,
    text_aligned_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The ``shiftdc`` stage: :func:`measure_policy` on the precursor, the PPO-Lagrangian policy and, when
    given, the text-aligned PPO-Lagrangian policy (``ppo.algorithm=ppo_lag_text``).

    Directions from the text-carried versions of the RL train prompts; measurement on the image-coupled
    requests of the held-out evaluation prompts (``cfg.shiftdc``: ``alphas``, ``ablation_alphas``,
    ``max_new_tokens``, ``batch_size``). Writes ``folder/shiftdc_samples.json`` (:data:`SAMPLES`: the
    per-prompt answers of each policy).

    Returns:
        ``policies`` (``sft`` / ``ppo_lag`` / ``ppo_lag_text``: :func:`measure_policy`'s metrics, plus
        ``effect``: safety gain and helpfulness drop at alpha 1, ShiftDC and whole shift), ``headline``
        (the distortion and effect of ``ppo_lag_text`` when given, the paper's setting of a model aligned
        on text; else of PPO-Lagrangian),
        with ``cfg.shiftdc.coupled_direction_check`` each policy's ``coupled_direction`` (the same measurement,
        alphas 0 and 1, with directions from the image-coupled train requests only),
        ``neutral_picture`` (what stands in for "no picture"), ``seconds``.
    """
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.io import write_json_atomic
    from saferlhfv.models.factory import load_saved_vlm

    start = time.perf_counter()
    folder = Path(folder)
    c = cfg.shiftdc
    train = rl_prompts(cfg.data, "train")
    evaluation = _coupled(rl_prompts(cfg.data, "evaluation"))
    if c.max_prompts:
        evaluation = evaluation.select(range(min(c.max_prompts, len(evaluation))))
    policies, samples = {}, {}
    runs = [("sft", Path(sft_dir)), ("ppo_lag", Path(aligned_dir))]
    if text_aligned_dir is not None:
        runs.append(("ppo_lag_text", Path(text_aligned_dir)))
    for name, path in runs:
        model, processor = load_saved_vlm(path / "model", dtype=cfg.model.dtype)
        metrics, rows = measure_policy(
            model.eval(), processor, train=train, evaluation=evaluation, alphas=c.alphas,
            ablation_alphas=c.ablation_alphas, max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
            image_size=cfg.data.image_size,
        )  # fmt: skip
        metrics["effect"] = _effect(metrics)
        if c.coupled_direction_check:
            check, _ = measure_policy(
                model, processor, train=_coupled(train), evaluation=evaluation, alphas=[0.0, 1.0], ablation_alphas=[],
                max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, image_size=cfg.data.image_size,
            )  # fmt: skip
            metrics["coupled_direction"] = {
                "projection": check["projection"],
                "perception_accuracy": check["perception_accuracy"],
                "sweep": check["sweep"],
                "effect": _effect({**check, "ablation": []}),
            }
        policies[name], samples[name] = metrics, rows
        del model
    write_json_atomic(folder / SAMPLES, samples)
    head = "ppo_lag_text" if text_aligned_dir is not None else "ppo_lag"
    return {
        "policies": policies,
        "headline": {"policy": head, **policies[head]["distortion"], **policies[head]["effect"]},
        "neutral_picture": f"plain {cfg.data.image_size} px picture of colour {list(BACKGROUNDS[0])}",
        "alphas": list(c.alphas),
        "ablation_alphas": list(c.ablation_alphas),
        "seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------- figures


def plot_distortion(metrics: dict[str, dict[str, Any]], *, titles: dict[str, str] | None = None):
    """The behavioural measurement: safety on harmful requests and helpfulness on benign ones, per policy,
    carried by the picture vs by the caption text (with the neutral picture).

    Args:
        metrics: policy name -> :func:`measure_policy`'s metrics.

    Returns:
        A ``matplotlib.figure.Figure`` with two bar panels.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(metrics)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    panels = (
        ("image_safety", "text_safety", "safety, harmful requests", (0, 1.05)),
        ("image_benign_helpfulness", "text_benign_helpfulness", "helpfulness (0..3), benign requests", (0, 3.1)),
    )
    for ax, (img_key, txt_key, ylabel, ylim) in zip(axes, panels):
        img = [metrics[n]["distortion"][img_key] for n in names]
        txt = [metrics[n]["distortion"][txt_key] for n in names]
        b1 = ax.bar(x - 0.2, img, 0.4, color="tab:blue", label="carried by the picture")
        b2 = ax.bar(x + 0.2, txt, 0.4, color="tab:grey", label="caption text + neutral picture")
        ax.bar_label(b1, fmt="%.2f", fontsize=8)
        ax.bar_label(b2, fmt="%.2f", fontsize=8)
        ax.set_xticks(x, [(titles or {}).get(n, n) for n in names], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_projections(metrics: dict[str, dict[str, Any]], *, titles: dict[str, str] | None = None):
    """Per layer: mean projection on ``s`` of image- and caption-carried requests (harmful / benign).

    Args:
        metrics: policy name -> :func:`measure_policy`'s metrics (one panel each).

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), sharey=True, squeeze=False)
    for ax, (name, m) in zip(axes[0], metrics.items()):
        p = m["projection"]
        x = list(range(m["n_layers"]))
        ax.plot(x, p["train_unsafe"], "k--", lw=1, label="train unsafe mean (text)")
        ax.plot(x, p["train_safe"], "k:", lw=1, label="train safe mean (text)")
        for key, color, style in (("harmful", "tab:red", "-"), ("benign", "tab:green", "-")):
            ax.plot(x, p[f"image_{key}"], style, marker="o", color=color, label=f"{key}, picture-carried")
            ax.plot(x, p[f"caption_{key}"], "--", marker="s", mfc="none", color=color, label=f"{key}, caption text")
        lo = m["layers"][0] - 0.5
        ax.axvspan(lo, x[-1] + 0.5, color="grey", alpha=0.1, lw=0, label="edited layers")
        ax.set_title((titles or {}).get(name, name), fontsize=10)
        ax.set_xlabel("decoder layer")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("projection on s  (m . s / |s|^2)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_alpha_sweep(metrics: dict[str, dict[str, Any]], *, titles: dict[str, str] | None = None):
    """Safety on picture-carried harmful requests and helpfulness on benign ones against alpha.

    ShiftDC (the shift's safety component) as lines, the whole-shift ablation as open markers; the
    text-carried safety as a horizontal reference.

    Returns:
        A ``matplotlib.figure.Figure`` with two panels.
    """
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_h) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    colors = iter(("tab:blue", "tab:orange", "tab:purple", "tab:brown"))
    for name, m in metrics.items():
        color, label = next(colors), (titles or {}).get(name, name)
        a = [p["alpha"] for p in m["sweep"]]
        ax_s.plot(a, [p["harmful_safety_rate"] for p in m["sweep"]], "-o", color=color, label=f"{label}: ShiftDC")
        ax_h.plot(a, [p["benign_helpfulness"] for p in m["sweep"]], "-o", color=color, label=f"{label}: ShiftDC")
        b = [p["alpha"] for p in m["ablation"]]
        ax_s.plot(b, [p["harmful_safety_rate"] for p in m["ablation"]], "s", mfc="none", ms=9, color=color,
                  label=f"{label}: whole shift")  # fmt: skip
        ax_h.plot(b, [p["benign_helpfulness"] for p in m["ablation"]], "s", mfc="none", ms=9, color=color,
                  label=f"{label}: whole shift")  # fmt: skip
        ax_s.axhline(m["distortion"]["text_safety"], color=color, ls=":", lw=1, label=f"{label}: caption text")
    ax_s.set_ylabel("safety, picture-carried harmful requests")
    ax_h.set_ylabel("helpfulness (0..3), benign picture requests")
    for ax in (ax_s, ax_h):
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    ax_s.set_ylim(-0.02, 1.02)
    ax_s.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
