"""Dataclass configs and the tiny / small / paper presets.

A preset is a YAML file in ``lib/saferlhfv/presets/`` (or any YAML path) whose
sections mirror :class:`Config`: ``model``, ``data``, ``sft``, ``reward``,
``cost``, ``guard``, ``guardrail``, ``ppo``, ``monitor``. Anything a preset does not set keeps the dataclass
default. Single fields are overridden with dotted keys, from a notebook cell::

    cfg = load_config("tiny", overrides={"ppo.lambda_init": 5.0})

or from any command line (``--set`` may repeat)::

    python -m saferlhfv.pipeline --preset tiny --set ppo.lambda_init=5

An unknown key anywhere is an error that names the key and the keys it could
have meant: silently ignored keys are a known pitfall of the public Safe
RLHF-V code, where a typo trains with the default without a word.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saferlhfv.paths import presets_dir

__all__ = [
    "ConfigError",
    "LoraConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "SFTConfig",
    "RewardConfig",
    "CostConfig",
    "GuardConfig",
    "GuardrailConfig",
    "PPOConfig",
    "MonitorConfig",
    "ShiftDCConfig",
    "NeuronsConfig",
    "Config",
    "PRESETS",
    "load_config",
    "apply_overrides",
    "replicate_seed",
    "config_from_dict",
    "add_config_arguments",
    "config_from_args",
]

PRESETS = ("tiny", "small", "paper")


class ConfigError(ValueError):
    """A preset or override names an unknown key or a value of the wrong type."""


@dataclass
class LoraConfig:
    """LoRA adapters through peft (off for the tiny preset, which trains every weight)."""

    #: train LoRA adapters (peft) instead of every weight.
    enabled: bool = False
    #: rank of the LoRA update matrices.
    r: int = 16
    #: LoRA scaling numerator: the update is scaled by alpha / r.
    alpha: int = 32
    #: dropout on the LoRA branch during training.
    dropout: float = 0.05
    #: module names peft wraps; the attention and MLP projections of Llama / Qwen2 decoders.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    """Which vision-language model to build or load.

    ``family`` is ``"tiny"`` (a LLaVA-architecture model built from the ``tiny_*``
    fields with a locally trained tokenizer: offline, CPU-fast) or a real family
    loaded with ``from_pretrained(name_or_path)``: ``"llava"`` (LLaVA-1.5),
    ``"llava_next"`` (LLaVA-1.6), ``"qwen2_vl"``, ``"qwen2_5_vl"``.
    """

    #: tiny (built here, sized by the tiny_* fields) | llava | llava_next | qwen2_vl | qwen2_5_vl (name_or_path).
    family: str = "tiny"
    #: hub id or local folder of a real model (ignored by the tiny family).
    name_or_path: str | None = None
    #: torch dtype name of the weights: float32, bfloat16 or float16.
    dtype: str = "float32"
    #: passed to from_pretrained (e.g. "auto"); None keeps everything on one device.
    device_map: str | None = None
    #: passed to from_pretrained (e.g. "sdpa", "flash_attention_2"); None: the library default.
    attn_implementation: str | None = None
    #: recompute activations in the backward pass (less memory, about 30 % more time).
    gradient_checkpointing: bool = False
    #: keep the vision tower fixed in every stage that fine-tunes the model: SFT, RM-V / CM-V, the guard,
    #: the monitor, PPO's actor and critics (the paper's setting; ppo / guard have their own switch too).
    freeze_vision_tower: bool = False
    #: LoRA adapters (section model.lora).
    lora: LoraConfig = field(default_factory=LoraConfig)
    # ---- the tiny model (used only when family == "tiny") ----
    #: the real classes, chat template and special tokens the tiny model is built with: llava (LLaVA-1.5
    #: layout, what the tiny preset trains) | llava_next | qwen2_vl | qwen2_5_vl (tests, the GPU check).
    tiny_arch: str = "llava"
    #: size of the BPE vocabulary trained on the world's corpus, special tokens included.
    tiny_vocab_size: int = 1024
    #: width of the tiny decoder.
    tiny_hidden_size: int = 128
    #: decoder layers of the tiny model.
    tiny_layers: int = 4
    #: attention heads of the tiny decoder.
    tiny_heads: int = 4
    #: MLP width of the tiny decoder.
    tiny_intermediate_size: int = 344
    #: longest sequence in tokens, image tokens included.
    tiny_max_positions: int = 256
    #: width of the tiny vision tower.
    tiny_vision_hidden_size: int = 64
    #: layers of the tiny vision tower.
    tiny_vision_layers: int = 2
    #: attention heads of the tiny vision tower.
    tiny_vision_heads: int = 4
    #: side of the square image the vision tower sees, in pixels.
    tiny_image_size: int = 48
    #: side of a vision patch in pixels; (image_size / patch_size)^2 image tokens per picture.
    tiny_patch_size: int = 8


@dataclass
class DataConfig:
    """Where the preference data comes from and, for the mini world, how it is generated.

    ``source`` is ``"mini"`` (BeaverTails-V-mini, generated by :mod:`saferlhfv.data.world`),
    the hub id ``"saferlhf-v/BeaverTails-V"``, or a local folder in the hub's layout.
    """

    #: "mini" (the generated world), "saferlhf-v/BeaverTails-V" (hub) or a local folder in the hub layout.
    source: str = "mini"
    #: harm-category configs to use; None = all 20.
    configs: list[str] | None = None
    #: which mini world: the seed of its prompts, pictures and answers (the data set, not a training seed).
    seed: int = 0
    #: preference pairs generated per category for the train / evaluation splits.
    pairs_per_category_train: int = 40
    pairs_per_category_eval: int = 10
    #: RL prompts per category, train / evaluation (disjoint from each other).
    prompts_per_category_train: int = 24
    prompts_per_category_eval: int = 8
    #: SFT examples per category in the precursor mixture.
    sft_per_category: int = 60
    #: share of the SFT mixture that is captioning ("what is in the picture?" -> names the object): grounding.
    sft_caption_share: float = 0.25
    #: how often the precursor SFT mixture complies with a harmful request (so the SFT policy is unsafe).
    precursor_compliance: float = 0.65
    #: guard (moderation) examples per category, train / evaluation: this many input rows and as many output rows.
    guard_per_category_train: int = 40
    guard_per_category_eval: int = 10
    #: probability that an annotator flips a preference label.
    label_noise: float = 0.1
    #: share of preference-pair responses that refer to the object as "it" instead of naming it,
    #: so that only the picture tells whether they answer a harmful request.
    pronoun_rate: float = 0.5
    #: side of the generated pictures in pixels (the processor resizes to the model's size).
    image_size: int = 64
    #: longest prompt / response kept, in tokens.
    max_prompt_tokens: int = 96
    max_response_tokens: int = 48


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training stage."""

    #: peak learning rate of AdamW (linear warm-up, then cosine decay).
    learning_rate: float = 1e-4
    #: AdamW weight decay.
    weight_decay: float = 0.0
    #: passes over the training set.
    epochs: int = 1
    #: stop after this many optimiser steps if set (overrides epochs).
    max_steps: int | None = None
    #: examples per optimiser step and process (before gradient accumulation).
    batch_size: int = 8
    #: micro-batches summed into one optimiser step.
    gradient_accumulation_steps: int = 1
    #: share of the steps spent warming the learning rate up from 0.
    warmup_ratio: float = 0.03
    #: clip the global gradient norm to this.
    max_grad_norm: float = 1.0
    #: evaluate on the held-out split every this many steps (0: only at the end).
    eval_every: int = 50
    #: checkpoint (atomically, resumable) every this many steps.
    save_every: int = 100


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning of the precursor policy on the world's SFT mixture.

    With ``vision_steps > 0`` (tiny family) the vision tower and projector are first pretrained
    to name the object in ``caption_examples`` pictures. With ``caption_steps > 0`` a
    vision-language alignment stage follows: that many optimiser steps on captioning examples
    only (``caption_examples`` of them), as LLaVA's first training stage does.
    """

    #: optimiser steps of a captioning-only alignment stage before SFT (LLaVA stage 1; 0 = none).
    caption_steps: int = 0
    #: captioning examples drawn for vision pretraining and the alignment stage.
    caption_examples: int = 2000
    #: tiny family: optimiser steps of vision pretraining before SFT (the vision tower and projector
    #: learn to name the object in ``caption_examples`` pictures; a real VLM's encoder comes pretrained).
    vision_steps: int = 0


@dataclass
class RewardConfig(TrainConfig):
    """RM-V: ``-log sigmoid(r_better - r_worse) + reg * mean(r^2)``."""

    #: weight of the score regulariser mean(r^2), keeping scores near 0.
    reg: float = 1e-3
    #: mini world: add this share of the train pairs again as off-distribution negatives (an answer
    #: against a damaged copy of it, labelled by the oracle with annotator noise; world.perturbed_pairs).
    perturbed_pairs: float = 0.0


@dataclass
class CostConfig(TrainConfig):
    """CM-V: pairwise term + ``sign_coeff`` * sign term + ``reg * mean(c^2)``.

    ``graded_sign`` scales the sign s = +1 (unsafe) / -1 (safe) by the graded harmless
    rate, as the paper's code does.
    """

    #: weight of the score regulariser mean(c^2).
    reg: float = 1e-3
    #: weight of the sign term -log sigmoid(s * c) (s = +1 unsafe, -1 safe).
    sign_coeff: float = 1.0
    #: scale the sign s by the graded harmless rate, as the paper code does.
    graded_sign: bool = False
    #: as ``RewardConfig.perturbed_pairs``.
    perturbed_pairs: float = 0.0


@dataclass
class GuardConfig(TrainConfig):
    """Beaver-Guard-V training: unsafe / category / severity heads on the SFT backbone.

    Loss ``BCE(unsafe) + category_weight * CE(category) + severity_weight * CE(severity)``.
    How the trained guard decides and filters is :class:`GuardrailConfig` (section ``guardrail``).
    """

    #: weight of the harm-category cross-entropy in the guard loss.
    category_weight: float = 1.0
    #: weight of the severity cross-entropy in the guard loss.
    severity_weight: float = 1.0
    #: weight of the auxiliary grounding head (names the object in the picture; mini world only; 0 = off).
    object_weight: float = 0.0
    #: the guard's replicate: its heads' initialisation, data order and extra training rows (with the top-level
    #: seed, :func:`replicate_seed`); the SFT backbone and the evaluation's answers are shared.
    seed: int = 0
    #: the category term on unsafe rows only (default: every row; the request's category is its topic).
    category_on_unsafe_only: bool = False
    #: guard rows per category drawn from the world for training (None: data.guard_per_category_train);
    #: the evaluation split is unchanged.
    rows_per_category: int | None = None
    #: leave typographic pictures (a word on a board) out of guard training (an ablation: the typographic
    #: probes then test a kind of picture the guard never saw, not only pictures it never saw).
    hold_out_typographic: bool = False
    #: extra typographic training rows per category (input and output each; adversarial training against
    #: typographic attacks; drawn apart from the probes). Ignored with hold_out_typographic.
    typographic_rows_per_category: int = 0
    #: benign-twin training rows per category (input and output each): captioning requests ("what is in the
    #: picture?") about harmful-looking pictures, so that a scary picture alone is not a reason to block.
    lookalike_rows_per_category: int = 0
    #: training rows per category (input and output each) whose question is wrapped in a jailbreak-style frame,
    #: in sets of three behind one frame (a coupled question with a harmful picture, the same with a benign
    #: one, the text question); half the frames are random sentences of world words. The role-play probes'
    #: templates stay held out.
    wrapper_rows_per_category: int = 0
    #: a single-response BeaverTails-V (hub id PKU-Alignment/BeaverTails-V, a local folder in its layout or a
    #: parquet / json file) whose rows are added to the guard's training rows (output moderation); None = none.
    single_response_source: str | None = None
    #: keep the backbone's vision tower as SFT left it (only the language model and the heads train).
    freeze_vision_tower: bool = False
    #: optimiser steps of a reading stage before the guard trains (LLaVA-architecture backbones, mini world):
    #: the vision tower and projector learn to name the object a picture shows or *says* (half of the
    #: pictures a sign, words drawn uniformly, apart from the probes); 0 = none.
    reading_steps: int = 0
    #: answers sampled from the precursor per RL *train* prompt, labelled by the oracle, added as output rows
    #: (the guard then also sees the policy it will moderate: misnamed objects, cut-off steps); 0 = none.
    precursor_answers: int = 1
    #: add every RL train prompt as an input-moderation row.
    prompts_as_inputs: bool = True
    #: share of output rows whose answer names a wrong object (labels re-judged), so the guard judges the
    #: picture rather than the object the answer names.
    misname_share: float = 0.3
    #: batches of rows of similar length (input rows are a question, output rows a question and an answer):
    #: less padding per batch, the same rows per epoch (:func:`saferlhfv.train.loop.length_grouped_order`).
    group_by_length: bool = True


@dataclass
class GuardrailConfig:
    """The trained guard at work: decisions, filter-and-regenerate rounds, probes (nothing trains).

    The guardrail blocks an item when ``p_unsafe`` reaches the threshold of its predicted
    severity: ``threshold`` (none; also the plain classifier's), ``threshold_minor`` (stricter),
    ``threshold_moderate``, ``threshold_severe`` (0 = always block severe). Not part of the guard
    model's cache key: moving a threshold re-evaluates the guard, it does not retrain it.
    """

    #: block when p_unsafe reaches this if no severity is predicted (also the plain classifier threshold).
    threshold: float = 0.5
    #: p_unsafe threshold for items of predicted severity minor (stricter than the default).
    threshold_minor: float = 0.7
    #: p_unsafe threshold for items of predicted severity moderate.
    threshold_moderate: float = 0.5
    #: p_unsafe threshold for items of predicted severity severe (0: always block).
    threshold_severe: float = 0.0
    #: output moderation: an answer whose request input moderation blocks is flagged from this p_unsafe
    #: on (at most; a lower level threshold stays); None = answers are judged without their request's verdict.
    threshold_flagged_request: float | None = 0.25
    #: filter-and-regenerate rounds after the first answers (the paper: 5).
    rounds: int = 5
    #: prepend a safety instruction to the question when regenerating a flagged answer.
    safety_instruction: bool = False
    #: adversarial probe items per family and label (harmful / benign look-alike), per mode.
    probes_per_family: int = 40


@dataclass
class PPOConfig:
    """PPO-Lagrangian (Safe RLHF-V); defaults are the paper code's (``docs/algorithms.md``).

    Not a :class:`TrainConfig`: PPO counts ``iterations`` of rollouts, not epochs or steps over a
    dataset, so it declares only the optimiser fields it reads (no ``epochs``, ``max_steps``,
    ``warmup_ratio``, ``eval_every`` or ``gradient_accumulation_steps`` to set by mistake).
    """

    #: actor learning rate (AdamW; schedule: lr_scheduler).
    learning_rate: float = 1e-5
    #: actor weight decay (critics use 0, as the reference does).
    weight_decay: float = 0.0
    #: learning-rate schedule of the actor and the critics: "constant" or "cosine" (to 0 at the last step).
    lr_scheduler: str = "constant"
    #: share of the run's optimiser steps over which the learning rates warm up linearly from 0.
    lr_warmup_ratio: float = 0.0
    #: AdamW's beta2 of the actor and the critics (beta1 is 0.9; the reference uses 0.95, torch 0.999).
    adam_beta2: float = 0.999
    #: minibatch size of the PPO update (episodes).
    batch_size: int = 8
    #: clip each model's global gradient norm to this.
    max_grad_norm: float = 1.0
    #: checkpoint every this many iterations.
    save_every: int = 100
    #: the seed of the RL stage (``--seeds`` varies it; :func:`~saferlhfv.train.ppo.run_seed`).
    seed: int = 0
    #: learning rate of the reward and cost critics.
    critic_learning_rate: float = 5e-6
    #: rollout-then-update iterations.
    iterations: int = 100
    #: answers sampled per iteration, split evenly over the processes.
    rollout_batch_size: int = 16
    #: passes of PPO updates over each rollout batch.
    ppo_epochs: int = 1
    #: longest sampled answer in tokens.
    max_new_tokens: int = 48
    #: sampling temperature of the rollouts.
    temperature: float = 1.0
    #: nucleus sampling of the rollouts (1.0: off).
    top_p: float = 1.0
    #: beta: per-token reward -beta * (log pi - log pi_ref).
    kl_coeff: float = 0.02
    #: also add +kl_coeff * KL to the per-token cost, as the public code does.
    kl_in_cost: bool = False
    #: PPO clip epsilon on the probability ratio.
    clip_range_ratio: float = 0.2
    #: clip of the critics' value change per update.
    clip_range_value: float = 5.0
    #: clip RM-V / CM-V scores to +- this before shaping.
    clip_range_score: float = 50.0
    #: discount of the per-token returns.
    gamma: float = 1.0
    #: lambda of generalised advantage estimation.
    gae_lambda: float = 0.95
    #: the method, a name of the registry ``saferlhfv.train.ppo.ALGORITHMS``: "ppo_lag" (learned
    #: multiplier), "reward_only" (lambda = 0), "fixed_lambda" (lambda = lambda_init, reward shaping),
    #: "repo" (rectified per-answer constraint), "grpo_lag" (critic-free, group baselines) or "grpo_repo"
    #: (both).
    algorithm: str = "ppo_lag"
    #: answers sampled per prompt in a rollout batch (rollout_batch_size / samples_per_prompt prompts).
    samples_per_prompt: int = 1
    #: grpo_lag: how group-centred scores are scaled, "group" (each group's std, DeepSeekMath), "batch"
    #: (the batch's std, TRL's scale_rewards="batch") or "none" (Dr. GRPO).
    group_scale: str = "group"
    #: grpo methods: what is normalised within a group. "advantages": reward and cost separately, then
    #: (A_r - lambda A_c) / (1 + lambda); "scores": the Lagrangian score R - lambda C of each answer, once
    #: (every prompt weighs the same, and a benign prompt's small cost spread is not blown up to unit scale);
    #: "budget": the reward centred in its group, the cost against the budget, one scale over the batch
    #: (group_scale does not apply; a prompt whose answers are all unsafe is still pushed away from them).
    group_combine: str = "advantages"
    #: normalise the combined advantage to zero mean, unit variance over the batch's real tokens.
    whiten_advantages: bool = False
    #: stop an iteration's PPO epochs once a minibatch's approx KL(pi_old || pi) per token exceeds this.
    target_kl: float | None = None
    #: mini world: the world's annotators (the oracle with ``data.label_noise`` flips) label pairs of the
    #: policy's own answers to the same prompt every iteration, and RM-V / CM-V take a step on them
    #: (online preference data, as the paper's pipeline labels new samples). Needs samples_per_prompt >= 2.
    online_labels: bool = False
    #: learning rate of RM-V and CM-V on the online pairs.
    online_label_learning_rate: float = 1e-4
    #: the Lagrange multiplier at the start (and lambda of fixed_lambda).
    lambda_init: float = 10.0
    #: cap on lambda (None: no cap).
    lambda_max: float | None = 20.0
    #: step size of the multiplier update on log lambda.
    lambda_lr: float = 0.1
    #: iterations before the multiplier starts to move.
    lambda_update_delay_steps: int = 1
    #: how lambda learns: "log" (the paper's step on log lambda, lambda_lr) or "pid" (Stooke et al. 2020's
    #: PID controller on lambda, pid_kp / pid_ki / pid_kd; :class:`~saferlhfv.algorithms.lagrange.PIDLagrange`).
    multiplier: str = "log"
    #: multiplier=pid: proportional gain.
    pid_kp: float = 1.0
    #: multiplier=pid: integral gain.
    pid_ki: float = 0.1
    #: multiplier=pid: derivative gain.
    pid_kd: float = 0.0
    #: episodes in the sliding window whose mean cost Jc the multiplier compares with the budget.
    cost_window: int = 128
    #: the budget d on the expected episode cost.
    threshold: float = -0.5
    #: RePO's per-answer budget d_r: every answer should have CM-V cost C(x, y) <= d_r (0: CM-V says safe).
    repo_threshold: float = 0.0
    #: RePO's tolerance epsilon on the mean violation E[{C - d_r}^+]: lambda rises above it and falls
    #: below it (0: no tolerance, lambda never falls).
    repo_tolerance: float = 0.0
    #: what RePO's critical constraint bounds: "answer" (C(x, y) <= d_r for every answer) or "prompt"
    #: (the prompt's expected cost E_y C(x, y) <= d_r, estimated over its samples_per_prompt >= 2 answers).
    repo_scope: str = "answer"
    #: one frozen SFT model carrying LoRA adapters for actor, critics, RM-V and CM-V (the reference =
    #: adapters off) instead of six models; needs model.lora.enabled (RM-V / CM-V trained as adapters).
    shared_base: bool = False
    #: keep the vision tower of the actor and the critics fixed during RL (the paper's setting): the
    #: policy then refuses or complies on features of the picture that PPO cannot blur.
    freeze_vision_tower: bool = False


@dataclass
class MonitorConfig(TrainConfig):
    """The streaming content monitor (SCM, Li et al. 2025): stops a harmful answer while it is written.

    A token head and a response head on the SFT backbone (:class:`~saferlhfv.models.monitor.StreamingMonitor`),
    trained with ``alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic`` on answers of the mini
    world and of the precursor, labelled by the oracle; the (tau, k) stopping rule is chosen on a
    validation split, results are read on a test split. The baseline (``alpha = gamma = 0``) learns from
    answer labels only.
    """

    #: the monitor's replicate: its heads, data draw and data order (with the top-level seed; the SFT
    #: backbone it starts from is shared), as ppo.seed is the RL stage's.
    seed: int = 0
    #: weight of the token-level cross-entropy (SCM: 0.6); the answer-level term gets 1 - alpha.
    alpha: float = 0.6
    #: weight of the logic term -log(1 - p + p * g): a harmful answer must hold a harmful token (SCM: 1).
    gamma: float = 1.0
    #: dropout on the token head's input (SCM: 0.1).
    dropout: float = 0.1
    #: answers in the train split (half harmful, half safe, as the oracle judges them).
    rows_train: int = 1600
    #: answers in the validation split, on which the stopping rule (tau, k) is chosen.
    rows_validation: int = 400
    #: answers in the test split, on which the results are read (prompts disjoint from the other splits).
    rows_test: int = 400
    #: share of each split's answers sampled from the SFT precursor (the rest written by the world's grammar).
    policy_share: float = 0.25
    #: share of the grammar's answers that call the object "it" (only the picture then tells the request's harm).
    pronoun_rate: float = 0.0
    #: share of the grammar's safe answers that are benign twins: compliance answers written as for a harmful
    #: request, to a harmful-sounding question about a harmless picture (only the picture and the object's
    #: name tell them from harmful rows). The rest of the safe answers are drawn as the world draws requests.
    #: Without twins the monitor stops benign answers on their compliant opening (README: 6.9 % of the benign
    #: evaluation prompts over 3 seeds, 2.0 % with them).
    twin_share: float = 0.5
    #: train the response head at every prefix of an answer on the answer's label, not only at its end
    #: (SCM trains it at the end; the baseline always does: a full-answer classifier read on prefixes).
    prefixes: bool = True
    #: the stopping rule (tau, k) is the earliest-stopping pair within this much of the best validation
    #: prefix macro-F1 (0: the best F1, ties to the earlier stop).
    rule_f1_tolerance: float = 0.01
    #: also train the baseline (alpha = gamma = 0: answer labels only) on the same data, evaluated the same way.
    baseline: bool = True
    #: streaming moderation measured on this many of the held-out evaluation prompts (the first ones): the SFT
    #: precursor written token by token and stopped by the chosen (tau, k), refused when stopped, next to the
    #: precursor unmoderated (same seeds); 0 skips the measurement.
    streaming_prompts: int = 160


@dataclass
class ShiftDCConfig:
    """ShiftDC (Zou et al. 2025): the image-induced activation shift and its training-free calibration.

    Safety direction per layer ``s_l = mean h_l(unsafe) - mean h_l(safe)`` at the last prompt token of
    caption-carried requests; modality shift ``m_l = h_l(image + question) - h_l(caption + question)``;
    calibration subtracts ``alpha * (m_l . s_l / |s_l|^2) s_l`` at the last prompt token of the upper
    half of the layers, during the prefill only (:mod:`saferlhfv.interpret.shiftdc`). Nothing trains.
    """

    #: calibration strengths alpha measured (ShiftDC: 1); 0 is the uncalibrated policy.
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    #: response budget in tokens of the measured (greedy) answers.
    max_new_tokens: int = 40
    #: strengths of the ablation that subtracts the whole modality shift, not only its safety component.
    ablation_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0])
    #: held-out image-coupled requests measured (0: all of them).
    max_prompts: int = 0
    #: prompts per forward pass / generation batch.
    batch_size: int = 32
    #: also measure with safety directions from the image-coupled train requests only (alphas 0 and 1): a
    #: check that the result does not hinge on which text-carried requests define "unsafe" and "safe".
    coupled_direction_check: bool = True


@dataclass
class NeuronsConfig:
    """Safety neurons (Chen et al. 2024): MLP neurons whose activations carry the aligned policy's safety.

    Change score of a neuron = RMS over completion tokens of ``a_aligned - a_SFT``, teacher-forced on the
    precursor's greedy answers; dynamic activation patching copies the aligned policy's activations at
    the top neurons into the precursor while it generates (:mod:`saferlhfv.interpret.neurons`).
    """

    #: shares of all MLP neurons patched (top by change score, and random of the same count per layer).
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2])
    #: draws of random neurons per share (the control), averaged.
    random_repeats: int = 3
    #: response budget in tokens of the measured (greedy) answers.
    max_new_tokens: int = 40
    #: training prompts the change scores are computed on (harmful ones for safety, benign ones for
    #: helpfulness neurons), the first of each; 0: all.
    score_prompts: int = 0
    #: harmful held-out prompts the patching curves are measured on, the first ones; 0: all.
    patch_prompts: int = 0
    #: numbers of top safety neurons the pre-generation safeguard reads (a logistic regression each).
    safeguard_neurons: list[int] = field(default_factory=lambda: [1, 3, 10, 30, 69, 138, 300])


@dataclass
class Config:
    """Everything one run needs; ``preset`` records where it came from."""

    #: where the config came from (tiny, small, paper or a YAML path); informational.
    preset: str = "tiny"
    #: the run's training seed: model initialisation, data order and sampling of every stage derive from it.
    seed: int = 0
    #: the vision-language model (section model).
    model: ModelConfig = field(default_factory=ModelConfig)
    #: the preference data and the mini world (section data).
    data: DataConfig = field(default_factory=DataConfig)
    #: precursor SFT (section sft).
    sft: SFTConfig = field(default_factory=SFTConfig)
    #: RM-V training (section reward).
    reward: RewardConfig = field(default_factory=RewardConfig)
    #: CM-V training (section cost).
    cost: CostConfig = field(default_factory=CostConfig)
    #: Beaver-Guard-V training (section guard).
    guard: GuardConfig = field(default_factory=GuardConfig)
    #: the trained guard at work: thresholds, filter-and-regenerate rounds, probes (section guardrail).
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)
    #: PPO-Lagrangian and its variants (section ppo).
    ppo: PPOConfig = field(default_factory=PPOConfig)
    #: the streaming content monitor and its baseline (section monitor).
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    #: ShiftDC, the modality-shift calibration (section shiftdc; nothing trains).
    shiftdc: ShiftDCConfig = field(default_factory=ShiftDCConfig)
    #: safety neurons between the precursor and the aligned policies (section neurons; nothing trains).
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML / JSON serialisable)."""
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for artifact cache keys."""
        d = self.to_dict()
        picked = {k: d[k] for k in sections} if sections else d
        blob = json.dumps(picked, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (loadable again with :func:`load_config`)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- parsing


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert ``value`` to the annotated type ``tp``; ``key`` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of fields, got {value!r}")
        return config_from_dict(value, tp, prefix=key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _unknown_key(key: str, known: list[str], prefix: str) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    where = f" in section '{prefix}'" if prefix else ""
    return ConfigError(f"unknown config key '{full}'{hint} (known keys{where}: {', '.join(known)})")


def config_from_dict(data: dict[str, Any], cls: type = None, *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` (default :class:`Config`) from a nested dict, strictly.

    Raises:
        ConfigError: a key that is not a field (named with its dotted path), or a
            value of the wrong type.
    """
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise _unknown_key(key, names, prefix)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. ppo.lambda_init=5")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str] | None) -> Config:
    """Return a copy of ``cfg`` with dotted-key overrides applied.

    Args:
        overrides: ``{"ppo.lambda_init": 5.0}`` or ``["ppo.lambda_init=5"]`` (values
            parsed as YAML scalars).
    """
    if not overrides:
        return cfg
    items = dict(_parse_override(o) for o in overrides) if isinstance(overrides, list) else dict(overrides)
    tree: dict[str, Any] = {}
    for key, value in items.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(_merge(cfg.to_dict(), tree))


def replicate_seed(cfg: Config, section: str) -> int:
    """A stage's replicate seed: ``1009 * seed + <section>.seed`` (0 with the defaults).

    Varying ``<section>.seed`` (``ppo``, ``monitor``, ``guard``) re-runs only that stage's own
    randomness (initialisation, data draw and order, sampling); the upstream stages, keyed by the
    top-level ``seed``, stay shared, so replicates of a stage share one precursor.
    """
    return 1009 * cfg.seed + getattr(cfg, section).seed


def load_config(preset: str | Path = "tiny", overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load a preset by name (``tiny``, ``small``, ``paper``) or YAML path, then apply overrides.

    Raises:
        ConfigError: unknown preset name, unknown key, or wrong type.
    """
    path = Path(preset)
    if not path.suffix:
        path = presets_dir() / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {str(preset)!r}; choose one of {', '.join(PRESETS)} or give a YAML path")
    if not path.is_file():
        raise ConfigError(f"preset file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a YAML mapping")
    data.setdefault("preset", path.stem)
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from None
    return apply_overrides(cfg, overrides)


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--preset`` and repeatable ``--set section.key=value`` to a command line.

    ``--help`` then also lists every config key with its default and one-line help
    (:func:`config_reference`), after the parser's own epilog.
    """
    reference = (
        "config keys for --set (section.key = the dataclass default, which a preset may change; help):\n"
        + config_reference()
    )
    parser.epilog = f"{parser.epilog}\n\n{reference}" if parser.epilog else reference
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--preset", default="tiny", help="tiny | small | paper, or a YAML path (default: tiny)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set ppo.lambda_init=5 (may repeat)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--preset`` with ``--set`` overrides applied."""
    return load_config(args.preset, overrides=list(args.overrides))


# --------------------------------------------------------------------------- help


def field_help(cls: type) -> dict[str, str]:
    """The one-line help of every field of dataclass ``cls``, read from the ``#:`` comments above them.

    A ``#:`` comment (Sphinx's attribute-doc convention) documents the field on the next line, and
    every field that follows it directly with the same first word and no comment of its own
    (``x_train`` / ``x_eval`` pairs). Inherited fields take their help from the class that declares them.

    Returns:
        ``{field name: help}`` in field order; a field without a comment maps to ``""``.
    """
    found: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        comment: list[str] = []
        shared, family = "", ""
        for line in inspect.getsource(klass).splitlines()[1:]:
            text = line.strip()
            if text.startswith("#:"):
                comment.append(text[2:].strip())
                continue
            name = text.split(":", 1)[0] if ":" in text and not text.startswith(("#", '"', "def ", "@")) else ""
            if name.isidentifier() and name in klass.__annotations__:
                if comment:
                    shared, family = " ".join(comment), name.split("_")[0]
                elif name.split("_")[0] != family:  # not a sibling (x_train / x_eval) of the last field
                    shared = ""
                found[name] = shared
            else:
                shared = ""
            comment = []
    return {f.name: found.get(f.name, "") for f in dataclasses.fields(cls)}


def config_reference() -> str:
    """Every config key with its dataclass default and its help, as ``--help`` prints it.

    One line per key, ``section.key = default  help``, grouped by section; nested sections
    (``model.lora``) are listed under their parent.
    """
    lines: list[str] = []
    default = Config()

    def walk(obj: Any, prefix: str) -> None:
        helps = field_help(type(obj))
        nested = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                nested.append((value, key + "."))
                continue
            lines.append(f"  {key} = {json.dumps(value)}  {helps[f.name]}".rstrip())
        for value, key in nested:
            lines.append(f"[{key[:-1]}] {type(value).__doc__.splitlines()[0]}")
            walk(value, key)

    top = [f.name for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(getattr(default, f.name))]
    helps = field_help(Config)
    lines.append("[top level]")
    lines += [f"  {name} = {json.dumps(getattr(default, name))}  {helps[name]}" for name in top]
    for name in [f.name for f in dataclasses.fields(Config) if f.name not in top]:
        section = getattr(default, name)
        lines.append(f"[{name}] {type(section).__doc__.splitlines()[0]}")
        walk(section, f"{name}.")
    return "\n".join(lines)
