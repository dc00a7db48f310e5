"""The whole reproduction as one command: ``python -m saferlhfv.pipeline --preset tiny --out DIR``.

Stages run in order and each adds its metrics (and its wall time in
``seconds``) under its own key of ``DIR/summary.json``, which is rewritten
atomically after every stage so an interrupted run keeps what it finished.

Stages, in order:

* ``data``: the BeaverTails-V-mini world: sizes per split, per-category counts,
  how often the more helpful response is not the safer one, image-text coupling.
* ``smoke``: builds the preset's VLM and a score model on it, answers a few
  evaluation prompts (image + question) and scores the answers at their last
  real token: proof that the model, processor, generation and score paths work
  end to end before anything is trained.
* then every trained entry of the stage table (:mod:`saferlhfv.stages`), in its order:
  ``sft`` (the precursor and its oracle evaluation), ``reward`` / ``cost`` (RM-V and CM-V),
  ``guard_model`` (Beaver-Guard-V trained), ``guard`` (the guard at work: moderation quality, the
  rounds of filter-and-regenerate on the precursor, adversarial probes), and the PPO methods of
  :data:`saferlhfv.stages.PPO_METHODS`
  (``ppo_lag``, ``ppo_reward_only``, ``ppo_repo``, ``ppo_grpo_lag``, ``ppo_grpo_repo``), each evaluated against the
  precursor with the oracle; ``--seeds 0 1 2`` adds mean +- std over seeds of the RL stage; last
  ``monitor``, the streaming content monitor that stops harmful answers early, and its baseline;
  then the training-free measurements inside the policies: ``shiftdc`` (the image-induced activation
  shift and its calibration) and ``safety_neurons`` (change scores, activation patching, a
  pre-generation safeguard).

Trained stages live in the artifact cache (:mod:`saferlhfv.artifacts`): a second
run, or a notebook, reuses them unless their config changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saferlhfv.config import Config, add_config_arguments, apply_overrides, config_from_args
from saferlhfv.io import write_json_atomic
from saferlhfv.stages import PIPELINE, PPO_METHODS

__all__ = ["STAGES", "run_pipeline", "main"]


def stage_data(cfg: Config, out: Path) -> dict[str, Any]:
    """Dataset statistics of the configured source (the mini world for tiny)."""
    from saferlhfv.data.world import dataset_statistics

    if cfg.data.source != "mini":
        raise NotImplementedError(
            f"the data stage describes the mini world; data.source={cfg.data.source!r} is loaded by "
            "saferlhfv.data.load_beavertails_v instead"
        )
    return dataset_statistics(cfg.data)


def stage_smoke(cfg: Config, out: Path, *, n_prompts: int = 4, max_new_tokens: int = 16) -> dict[str, Any]:
    """Build the VLM + a score model, answer a few evaluation prompts, score the answers."""
    from saferlhfv.data.world import rl_prompts, text_corpus
    from saferlhfv.models.factory import count_parameters, load_vlm
    from saferlhfv.models.generation import encode_prompts, generate_responses
    from saferlhfv.models.score import ScoreModel

    corpus = text_corpus(cfg.data) if cfg.model.family == "tiny" else None
    model, processor = load_vlm(cfg.model, corpus, seed=cfg.seed)
    scorer = ScoreModel(model, seed=cfg.seed).eval()
    prompts = rl_prompts(cfg.data, "evaluation")
    prompts = prompts.select(range(min(n_prompts, len(prompts))))
    images, questions = list(prompts["image"]), list(prompts["question"])
    responses = generate_responses(
        model, processor, images, questions, max_new_tokens=max_new_tokens, do_sample=True, seed=cfg.seed
    )
    with torch.no_grad():
        batch = encode_prompts(processor, images, questions, responses, padding_side="right").to(model.device)
        scored = scorer(**batch)
    return {
        "model_family": cfg.model.family,
        "parameters": count_parameters(model),
        "sequence_length": int(batch["input_ids"].shape[1]),
        "samples": [
            {"question": q, "response": r, "end_score": round(float(s), 4)}
            for q, r, s in zip(questions, responses, scored.end_scores)
        ],
    }


def _stage(name: str) -> Callable[[Config, Path], dict[str, Any]]:
    def run(cfg: Config, out: Path) -> dict[str, Any]:
        from saferlhfv.stages import ensure

        return dict(ensure(name, cfg)[1])

    run.__doc__ = f"The cached {name!r} entry of the stage table (trained if missing)."
    return run


#: step name -> function(cfg, out_dir) -> metrics; run in this order: the two untrained checks,
#: then every trained entry of the stage table (:data:`saferlhfv.stages.PIPELINE`).
STAGES: dict[str, Callable[[Config, Path], dict[str, Any]]] = {
    "data": stage_data,
    "smoke": stage_smoke,
    **{name: _stage(name) for name in PIPELINE},
}


def run_pipeline(
    cfg: Config, out: str | Path, stages: list[str] | None = None, *, seeds: list[int] | None = None
) -> dict[str, Any]:
    """Run ``stages`` (all when None) in order, writing ``out/summary.json`` after each.

    With ``seeds``, each PPO stage also trains one run per seed of the RL stage (``ppo.seed``;
    the stage's own numbers are those of ``cfg.ppo.seed``) and adds ``seeds``: their ``mean`` and
    ``std`` (:func:`saferlhfv.sweep.seed_runs`).

    Returns:
        The summary: ``preset``, ``config`` and one entry of metrics per stage.
    """
    names = list(STAGES) if not stages else stages
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    summary: dict[str, Any] = {"preset": cfg.preset, "stages": names}
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        start = time.perf_counter()
        metrics = STAGES[name](cfg, out)
        if seeds and name in PPO_METHODS:
            from saferlhfv.sweep import seed_runs

            report = seed_runs(apply_overrides(cfg, PPO_METHODS[name]), seeds)
            metrics["seeds"] = {k: report[k] for k in ("seeds", "mean", "std")}
        # a cached stage reports the seconds it took to train; this run's wall time is separate
        metrics.setdefault("seconds", round(time.perf_counter() - start, 2))
        metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
        summary[name] = metrics
        write_json_atomic(out / "summary.json", summary)
        print(f"[{i}/{len(names)}] {name} done in {metrics['wall_seconds']:.1f} s", flush=True)
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    print(f"\n{'stage':<16} {'seconds':>7}  highlights")
    for name in summary["stages"]:
        m = summary[name]
        if name == "data":
            sizes = m.get("sizes", {})
            note = ", ".join(f"{k}={v}" for k, v in sizes.items()) if isinstance(sizes, dict) else ""
        elif name == "smoke":
            note = f"{m['parameters']:,} parameters; first answer: {m['samples'][0]['response'][:40]!r}"
        elif name == "sft":
            p = m["policy"]
            note = (
                f"precursor safety on harmful prompts {p['harmful_safety_rate']:.2f}, "
                f"benign helpfulness {p['benign_helpfulness']:.2f}"
            )
        elif name in ("reward", "cost"):
            note = f"eval accuracy {m['eval_accuracy']:.3f}, blank-image accuracy {m['image_ablation_accuracy']:.3f}"
            if name == "cost":
                note += f", sign accuracy {m['eval_sign_accuracy']:.3f}"
        elif name == "guard_model":
            accuracy = m.get("eval_unsafe_accuracy", float("nan"))
            note = f"{m['rows']} training rows, held-out unsafe accuracy {accuracy:.2f}"
        elif name == "guard":
            rounds = m.get("rounds") or []
            note = f"output unsafe F1 {m.get('output_unsafe_f1', float('nan')):.2f}"
            if rounds:
                note += f", safety over rounds {rounds[0]:.2f} -> {rounds[-1]:.2f}"
        elif name == "monitor":
            note = (
                f"macro-F1 {m['macro_f1']:.2f} whole answers, {m['prefix_macro_f1']:.2f} from prefixes "
                f"(tau {m['tau']}, k {m['k']}), harmful answers stopped after {m['mean_fraction_seen']:.0%} "
                "of their tokens"
            )
            if m.get("baseline"):
                note += f"; baseline {m['baseline']['prefix_macro_f1']:.2f} from prefixes"
        elif name == "shiftdc":
            h = m["headline"]
            note = (
                f"{h['policy']}: harmful requests safe {h['image_safety']:.2f} by picture, {h['text_safety']:.2f} "
                f"as caption text; ShiftDC (alpha {h['alpha']}) safety {h['safety_gain']:+.2f}, "
                f"benign helpfulness {-h['helpfulness_drop']:+.2f}"
            )
        elif name == "safety_neurons":
            h = m["headline"]
            note = (
                f"top {h['fraction']:.0%} neurons restore {h['top_restored']:.0%} of the safety gap (random "
                f"{h['random_restored']:.0%}, all {h['all_restored']:.0%}); safeguard AUC {h['safeguard_auc']:.2f}"
            )
        elif name.startswith("ppo"):
            note = (
                f"safety {m['safety_rate']:.2f} (precursor {m['precursor']['safety_rate']:.2f}), "
                f"helpful win rate {m['helpful_winrate']:.2f}, cost {m['mean_cost']:.2f} (budget {m['threshold']}), "
                f"lambda {m['final_lambda']:.2f}"
            )
        else:
            note = ""
        print(f"{name:<16} {m['seconds']:>7.1f}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferlhfv.pipeline", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", default="runs/tiny", help="output folder for summary.json (default: runs/tiny)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), help="run only these stages")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="PPO stages: also one run per seed of the RL stage, with mean +- std"
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    summary = run_pipeline(cfg, args.out, args.stages, seeds=args.seeds)
    _print_table(summary)
    print(f"\nsummary written to {Path(args.out) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
