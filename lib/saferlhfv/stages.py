"""The stage table: every trained stage of the reproduction, what it builds on, and its cache key.

===============  ==================  ==================  ==========================================
stage            upstream            own sections        what it trains (module)
===============  ==================  ==================  ==========================================
``sft``          (none)              seed, model, data,  the precursor policy (:mod:`saferlhfv.train.sft`)
                                     sft
``reward``       sft                 reward              RM-V (:mod:`saferlhfv.train.preference`)
``cost``         sft                 cost                CM-V (:mod:`saferlhfv.train.preference`)
``guard_model``  sft                 guard               Beaver-Guard-V (:mod:`saferlhfv.train.guard`)
``guard``        sft, guard_model    guardrail           nothing: the guard at work (moderation,
                                                         filtering rounds, probes)
``ppo``          sft, reward, cost   ppo                 the RL stage (:mod:`saferlhfv.train.ppo_lag`)
``monitor``      sft                 monitor             the streaming content monitor and its baseline
                                                         (:mod:`saferlhfv.train.monitor`)
``shiftdc``      sft, ppo_lag,       shiftdc             nothing: ShiftDC's modality shift measured and
                 ppo_lag_text                            calibrated (:mod:`saferlhfv.interpret.shiftdc`)
``safety_        sft, ppo_lag,       neurons             nothing: safety neurons scored and patched
neurons``        ppo_reward_only                         (:mod:`saferlhfv.interpret.neurons`)
===============  ==================  ==================  ==========================================

A stage's artifact key hashes its own sections and those of every stage upstream of it, so a
change to ``ppo`` retrains only PPO, while a change to ``sft`` retrains everything. The ``ppo``
stage has *variants*: the methods the pipeline compares (:data:`PPO_METHODS`) and the runs a later
stage measures (:data:`PPO_SETTINGS`), each the same stage under a few config overrides. Everything
that needs a trained model (the pipeline, the bench, the widgets, the notebooks, the diagnostics)
asks :func:`ensure` for it, which trains what is missing upstream first, then caches
(:func:`saferlhfv.artifacts.cached`). An upstream entry may name a variant (``ppo_lag``): the
stage then reads that method's policy.

Adding a stage is one :class:`Stage` entry here and its build function in ``train/``; adding a
PPO method to the pipeline is one line of :data:`PPO_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhfv.artifacts import RESULT, artifact_folder, cached
from saferlhfv.config import Config, apply_overrides

__all__ = [
    "Stage",
    "STAGES",
    "PPO_METHODS",
    "PPO_SETTINGS",
    "PIPELINE",
    "stage",
    "owner",
    "resolve",
    "config_sections",
    "artifact_dir",
    "upstream_dirs",
    "ensure",
]

#: build(cfg, folder, upstream folders by stage name, resume) -> JSON-serialisable metrics.
Build = Callable[[Config, Path, dict[str, Path], bool], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One trained, cached stage.

    Attributes:
        name: the stage's name (and its artifact folder's prefix).
        help: one line, for ``--help`` and tables.
        build: trains the stage into the folder it is given (resuming from a checkpoint there
            when ``resume``) from its upstream artifacts, and returns its metrics.
        upstream: stages whose artifacts the build reads (trained first when missing).
        sections: the config sections the stage itself reads (its key adds the upstream ones').
        variants: named config overrides of this stage that the pipeline runs as separate entries.
        hidden: metrics left out of the command line's short print (long per-item tables).
        processes: whether the build runs under several processes (``accelerate launch``).
    """

    name: str
    help: str
    build: Build
    upstream: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    processes: bool = False


def _build_sft(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.train.sft import train_sft

    return train_sft(cfg, folder, resume=resume)


def _build_preference(kind: str) -> Build:
    def build(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
        from saferlhfv.train.preference import train_preference_model

        return train_preference_model(cfg, kind, folder, upstream["sft"], resume=resume)

    return build


def _build_guard_model(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.train.guard import train_guard_model

    return train_guard_model(cfg, folder, upstream["sft"], resume=resume)


def _build_guard(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.train.guard import evaluate_guard

    return evaluate_guard(cfg, folder, upstream["sft"], upstream["guard_model"])


def _build_monitor(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.train.monitor import train_monitor

    return train_monitor(cfg, folder, upstream["sft"], resume=resume)


def _build_shiftdc(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.interpret.shiftdc import run_shiftdc

    return run_shiftdc(cfg, folder, sft_dir=upstream["sft"], aligned_dir=upstream["ppo_lag"],
                       text_aligned_dir=upstream["ppo_lag_text"])  # fmt: skip


def _build_safety_neurons(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.interpret.neurons import run_safety_neurons

    return run_safety_neurons(
        cfg,
        folder,
        sft_dir=upstream["sft"],
        aligned_dir=upstream["ppo_lag"],
        reward_only_dir=upstream["ppo_reward_only"],
    )


def _build_ppo(cfg: Config, folder: Path, upstream: dict[str, Path], resume: bool) -> dict[str, Any]:
    from saferlhfv.train.ppo_lag import train_ppo_lag

    return train_ppo_lag(
        cfg, folder, sft_dir=upstream["sft"], reward_dir=upstream["reward"], cost_dir=upstream["cost"], resume=resume
    )


#: how the critic-free methods sample and score their groups (:data:`PPO_METHODS`).
_GROUPS: dict[str, Any] = {"ppo.samples_per_prompt": 4, "ppo.rollout_batch_size": 32, "ppo.group_combine": "budget"}

#: the PPO methods the pipeline trains, each the ``ppo`` stage under these overrides (``--seeds``
#: repeats them). RePO's target is zero violations, so its multiplier only rises: ``lambda_max`` 5,
#: not the tiny preset's 2 (chosen for PPO-Lagrangian; at 2 RePO sat at the cap and left 0.43 of
#: harmful prompts unsafe over 3 seeds). The critic-free methods score 4 answers per prompt, 8 prompts
#: per rollout of 32, with the reward centred in its group and the cost against its budget
#: (``group_combine`` "budget", :mod:`saferlhfv.train.ppo.grpo`): centring the cost too left every
#: prompt whose 4 answers were all unsafe without any push (safe GRPO with rollouts of 16, centred
#: costs and lambda_max 5, 3 seeds on one precursor: 0.14 of harmful prompts unsafe at benign
#: helpfulness 1.64; now 0.12 at 2.27, with the preset's cap; on a precursor of ``seed=1`` 0.27 at 1.96
#: and 0.35 at 2.36: the README's results). The critic-free RePO (``grpo_repo``) has ``lambda_max`` 3:
#: its multiplier too sits at the cap.
PPO_METHODS: dict[str, dict[str, Any]] = {
    "ppo_lag": {"ppo.algorithm": "ppo_lag"},
    "ppo_reward_only": {"ppo.algorithm": "reward_only"},
    "ppo_repo": {"ppo.algorithm": "repo", "ppo.lambda_max": 5.0},
    "ppo_grpo_lag": {"ppo.algorithm": "grpo_lag", **_GROUPS},
    "ppo_grpo_repo": {"ppo.algorithm": "grpo_repo", **_GROUPS, "ppo.lambda_max": 3.0},
}

#: PPO runs that a later stage measures, not methods the pipeline compares: the ``ppo`` stage under
#: these overrides, variants like the methods (``python -m saferlhfv.run ppo_lag_text``). PPO-Lagrangian
#: aligned on text-carried requests only (caption + question, a neutral picture) is ShiftDC's setting:
#: a model made safe on text, then asked with the picture (:mod:`saferlhfv.interpret.shiftdc`).
PPO_SETTINGS: dict[str, dict[str, Any]] = {"ppo_lag_text": {"ppo.algorithm": "ppo_lag_text"}}

#: stage name -> :class:`Stage`, in training order (every stage after its upstream ones).
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("sft", "the precursor policy (SFT) and its oracle evaluation", _build_sft,
              sections=("seed", "model", "data", "sft")),
        Stage("reward", "RM-V, the reward model", _build_preference("reward"), ("sft",), ("reward",),
              hidden=("per_category_accuracy",)),
        Stage("cost", "CM-V, the cost model", _build_preference("cost"), ("sft",), ("cost",),
              hidden=("per_category_accuracy",)),
        Stage("guard_model", "Beaver-Guard-V, the moderation model, trained", _build_guard_model,
              ("sft",), ("guard",)),
        Stage("guard", "Beaver-Guard-V at work: moderation, filter-and-regenerate rounds, probes", _build_guard,
              ("sft", "guard_model"), ("guardrail",), hidden=("output", "input")),
        Stage("ppo", "the RL stage (ppo.algorithm), evaluated against the precursor", _build_ppo,
              ("sft", "reward", "cost"), ("ppo",), variants={**PPO_METHODS, **PPO_SETTINGS},
              hidden=("per_category_safety", "behaviour", "prompt_costs"), processes=True),
        Stage("monitor", "the streaming content monitor (SCM) and its baseline: early stopping of harmful answers",
              _build_monitor, ("sft",), ("monitor",)),
        Stage("shiftdc", "ShiftDC: the image-induced activation shift, measured and calibrated (training-free)",
              _build_shiftdc, ("sft", "ppo_lag", "ppo_lag_text"), ("shiftdc",), hidden=("policies",)),
        Stage("safety_neurons", "safety neurons: change scores, activation patching, a pre-generation safeguard",
              _build_safety_neurons, ("sft", "ppo_lag", "ppo_reward_only"), ("neurons",),
              hidden=("patching", "safeguard", "overlap", "score_stats")),
    )
}  # fmt: skip

#: the trained entries of the pipeline, in order: each stage, or its variants where it has some.
PIPELINE: tuple[str, ...] = tuple(v for s in STAGES.values() for v in (s.variants or [s.name]))


def owner(name: str) -> Stage:
    """The stage called ``name``, or the stage whose variant ``name`` is (a clear error for an unknown name)."""
    for s in STAGES.values():
        if name in s.variants:
            return s
    return stage(name)


def stage(name: str) -> Stage:
    """The :class:`Stage` called ``name``; a clear error naming the known ones otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {list(STAGES)} (and the PPO methods {list(PPO_METHODS)})")
    return STAGES[name]


def resolve(name: str, cfg: Config) -> tuple[Stage, Config]:
    """A stage or a stage's variant (``ppo_repo``...) by name: ``(stage, cfg with its overrides)``."""
    s = owner(name)
    return (s, apply_overrides(cfg, s.variants[name])) if name in s.variants else (s, cfg)


def config_sections(name: str) -> tuple[str, ...]:
    """Every config section ``name``'s artifact depends on: upstream stages' first, then its own."""
    out: list[str] = []
    s = owner(name)
    for up in s.upstream:
        out += [sec for sec in config_sections(up) if sec not in out]
    return tuple(out + [sec for sec in s.sections if sec not in out])


def artifact_dir(cfg: Config, name: str) -> Path:
    """Folder of stage (or variant) ``name``'s artifact for ``cfg`` (not created)."""
    s, cfg = resolve(name, cfg)
    return artifact_folder(cfg, s.name, cfg.fingerprint(*config_sections(s.name)))


def upstream_dirs(cfg: Config, name: str, *, train_missing: bool = True) -> dict[str, Path]:
    """Artifact folders of ``name``'s upstream stages, by stage name.

    Args:
        train_missing: train (and cache) the missing ones; when False (several processes, where
            each would train its own copy) a missing one is an error that says how to train it.
    """
    s = stage(name)
    if train_missing:
        return {up: ensure(up, cfg)[0] for up in s.upstream}
    dirs = {up: artifact_dir(cfg, up) for up in s.upstream}
    missing = [str(d) for d in dirs.values() if not (d / RESULT).is_file()]
    if missing:
        raise SystemExit(
            f"{name} under several processes needs its upstream artifacts first (missing: {', '.join(missing)}). "
            f"Train them once in a single process: python -m saferlhfv.pipeline --preset {cfg.preset} "
            f"--stages {' '.join(s.upstream)} (with the same --set overrides)."
        )
    return dirs


def ensure(name: str, cfg: Config, *, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """``(folder, metrics)`` of stage ``name`` (or a variant) for ``cfg``: cached, else trained.

    Upstream stages are ensured first (trained if missing, never forced). With ``force`` the
    stage itself trains again from scratch.
    """
    s, cfg = resolve(name, cfg)
    dirs = upstream_dirs(cfg, s.name)
    key = cfg.fingerprint(*config_sections(s.name))
    return cached(cfg, s.name, key, lambda folder: s.build(cfg, folder, dirs, not force), force=force)
