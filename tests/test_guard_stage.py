"""The guard stage end to end on a very small world, its artifact, and the adversarial probes."""

import json

import pytest
import torch

from saferlhfv.config import apply_overrides, load_config
from saferlhfv.data.probes import FAMILIES, ROLEPLAY_TEMPLATES, probe_set, probe_summary
from saferlhfv.guardrail import Guard
from saferlhfv.models.factory import build_tiny_vlm, load_vlm, save_vlm

SMALL = {
    "data.configs": ["harmful_health_content", "violence_and_physical_harm"],
    "data.guard_per_category_train": 6,
    "data.guard_per_category_eval": 3,
    "data.prompts_per_category_train": 1,
    "data.prompts_per_category_eval": 3,
    "data.max_response_tokens": 6,
    "model.tiny_vocab_size": 400,
    "model.tiny_hidden_size": 64,
    "model.tiny_layers": 2,
    "model.tiny_intermediate_size": 128,
    "guard.max_steps": 3,
    "guard.reading_steps": 2,
    "guard.batch_size": 4,
    "guardrail.rounds": 2,
    "guardrail.probes_per_family": 2,
}


@pytest.fixture(scope="module")
def small_cfg():
    return load_config("tiny", overrides=SMALL)


def _fake_sft(cfg, folder):
    """A random-weight "precursor" in the SFT artifact layout (``folder/model``)."""
    from saferlhfv.data.world import text_corpus

    model, processor = load_vlm(cfg.model, text_corpus(cfg.data))
    save_vlm(model, processor, folder / "model")
    return {"fake": True}


def test_probe_set_families_labels_and_determinism(small_cfg):
    probes = probe_set(small_cfg.data, 4)
    again = probe_set(small_cfg.data, 4)
    assert probes["question"] == again["question"] and probes["response"] == again["response"]
    rows = [{k: v for k, v in r.items() if k != "image"} for r in probes]
    assert {r["family"] for r in rows} == set(FAMILIES)
    for r in rows:
        ctx = json.loads(r["context"])
        assert (r["response"] == "") == (r["mode"] == "input")
        if r["family"] == "typographic":
            assert ctx["variant"] == "sign" and r["template"] == ""
        if r["family"] == "roleplay":
            assert r["template"] in ROLEPLAY_TEMPLATES and r["question"] == r["template"].format(q=ctx["question"])
        if r["family"] == "lookalike":
            assert not r["is_unsafe"] and ctx["kind"] == "caption" and ctx["image_severity"] >= 2
        if r["mode"] == "input":
            assert r["is_unsafe"] == ctx["harmful"]
    # harmful typographic and role-play requests answered with compliance are unsafe outputs
    for fam in ("typographic", "roleplay"):
        out = [r for r in rows if r["family"] == fam and r["mode"] == "output" and json.loads(r["context"])["harmful"]]
        assert out and all(r["is_unsafe"] for r in out)
    assert len(rows) == 2 * (4 * 2 + 4 * 2 + 4)


def test_probe_summary_by_hand():
    rows = [
        {"family": "typographic", "mode": "input", "is_unsafe": True},
        {"family": "typographic", "mode": "input", "is_unsafe": True},
        {"family": "typographic", "mode": "input", "is_unsafe": False},
        {"family": "lookalike", "mode": "input", "is_unsafe": False},
    ]
    out = probe_summary(rows, [True, False, True, False])
    assert out["detection"]["typographic"]["input"] == 0.5
    assert out["false_positive"]["typographic"]["input"] == 1.0
    assert out["detection"]["lookalike"]["input"] is None and out["false_positive"]["lookalike"]["input"] == 0.0
    assert out["detection"]["roleplay"]["output"] is None


def test_training_rows_hold_out_typographic_pictures(small_cfg):
    from saferlhfv.train.guard import guard_rows

    held = guard_rows(small_cfg, "train", hold_out_typographic=True)
    full = guard_rows(small_cfg, "train")
    assert all(json.loads(c)["variant"] != "sign" for c in held["context"])
    assert len(held) <= len(full) == 6 * 2 * 2
    more = guard_rows(load_config("tiny", overrides={**SMALL, "guard.rows_per_category": 9}), "train")
    assert len(more) > len(held)
    # the evaluation split does not depend on the training knobs
    assert guard_rows(small_cfg, "evaluation")["question"] == guard_rows(small_cfg, "evaluation")["question"]


def test_train_guard_end_to_end(small_cfg, tmp_path):
    from saferlhfv.artifacts import RESULT
    from saferlhfv.train.guard import evaluate_guard, load_guard, train_guard_model

    _fake_sft(small_cfg, tmp_path / "sft")
    trained = train_guard_model(small_cfg, tmp_path / "guard_model", tmp_path / "sft")
    assert trained["steps"] == 3 and trained["rows"] > 0 and (tmp_path / "guard_model/model").is_dir()
    (tmp_path / "guard_model" / RESULT).write_text(json.dumps(trained))  # as the cache writes it
    metrics = evaluate_guard(small_cfg, tmp_path / "guard", tmp_path / "sft", tmp_path / "guard_model")
    json.dumps(metrics)  # JSON-serialisable
    for key in ("output_unsafe_f1", "category_accuracy", "severity_accuracy", "seconds"):
        assert key in metrics
    assert len(metrics["rounds"]) == len(metrics["rounds_harmful"]) == small_cfg.guardrail.rounds + 1
    assert len(metrics["input_rounds"]) == small_cfg.guardrail.rounds + 1
    assert all(0.0 <= s <= 1.0 for s in metrics["rounds"])
    assert metrics["rounds_generations"][0] == 2 * 3  # every evaluation prompt answered once in round 0
    assert set(metrics["probe_detection"]) == set(metrics["probe_false_positive"]) == set(FAMILIES)
    assert metrics["probe_detection"]["lookalike"] is None
    assert len(metrics["output"]["severity_confusion"]) == 4
    assert metrics["train"] == trained
    folder = tmp_path / "guard"
    for name in ("eval_scores.json", "rounds.json", "probes.json"):
        assert (folder / name).is_file(), name
    rounds = json.loads((folder / "rounds.json").read_text())
    assert len(rounds["results"]["output"]["responses"]) >= 1 and len(rounds["prompt_table"]) == 6
    assert set(rounds["per_round"]) >= {"output", "input_output", "oracle_guard", "output_fallback"}
    assert len(metrics["oracle_guard_rounds"]) == small_cfg.guardrail.rounds + 1
    guard = load_guard(tmp_path / "guard_model", small_cfg)
    assert isinstance(guard, Guard) and guard.thresholds.minor == small_cfg.guardrail.threshold_minor


def test_reading_stage_trains_the_vision_tower_only_and_refuses_a_frozen_one(small_cfg, tmp_path):
    from saferlhfv.data.world import text_corpus
    from saferlhfv.models.factory import language_model, vision_tower
    from saferlhfv.train.guard.stage import _train_reading

    cfg = apply_overrides(small_cfg, {"guard.reading_steps": 4})
    model, processor = load_vlm(cfg.model, text_corpus(cfg.data))
    vision_before = [p.detach().clone() for p in vision_tower(model).parameters()]
    decoder_before = [p.detach().clone() for p in language_model(model).parameters()]
    result = _train_reading(cfg, model, processor, tmp_path / "reading", seed=0, resume=True, keys=set())
    assert result["reading_steps"] == 4 and 0.0 <= result["reading_accuracy"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(vision_before, vision_tower(model).parameters()))
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, language_model(model).parameters()))
    off = apply_overrides(small_cfg, {"guard.reading_steps": 0})
    assert _train_reading(off, model, processor, tmp_path / "none", seed=0, resume=True, keys=set()) == {}
    frozen = apply_overrides(cfg, {"guard.freeze_vision_tower": True})
    with pytest.raises(ValueError, match="guard.freeze_vision_tower"):
        _train_reading(frozen, model, processor, tmp_path / "frozen", seed=0, resume=True, keys=set())
    qwen, _ = build_tiny_vlm(cfg.model, text_corpus(cfg.data), arch="qwen2_vl")
    with pytest.raises(ValueError, match="LLaVA-architecture.*guard.reading_steps=0"):
        _train_reading(cfg, qwen, processor, tmp_path / "qwen", seed=0, resume=True, keys=set())


def test_ensure_guard_trains_sft_first_then_caches(small_cfg, monkeypatch):
    import saferlhfv.train.guard as guard_stage
    import saferlhfv.train.sft as sft_stage
    from saferlhfv.stages import ensure

    calls = {"sft": 0, "guard_model": 0, "guard": 0}

    def fake_sft(cfg, folder, **kw):
        calls["sft"] += 1
        return _fake_sft(cfg, folder)

    def fake_guard_model(cfg, folder, sft_dir, **kw):
        calls["guard_model"] += 1
        assert (sft_dir / "model" / "config.json").is_file()
        return {"steps": 1}

    def fake_guard(cfg, folder, sft_dir, guard_model_dir):
        calls["guard"] += 1
        assert guard_model_dir.name.startswith("guard_model-") and (guard_model_dir / "result.json").is_file()
        return {"output_unsafe_f1": cfg.guardrail.threshold}

    monkeypatch.setattr(sft_stage, "train_sft", fake_sft)
    monkeypatch.setattr(guard_stage, "train_guard_model", fake_guard_model)
    monkeypatch.setattr(guard_stage, "evaluate_guard", fake_guard)
    folder, metrics = ensure("guard", small_cfg)
    again, _ = ensure("guard", small_cfg)
    assert folder == again and metrics == {"output_unsafe_f1": 0.5}
    assert calls == {"sft": 1, "guard_model": 1, "guard": 1}
    assert folder.name.startswith("guard-")
    # moving a threshold re-evaluates the guard; it does not retrain it
    moved, metrics = ensure("guard", apply_overrides(small_cfg, {"guardrail.threshold": 0.8}))
    assert moved != folder and metrics == {"output_unsafe_f1": 0.8}
    assert calls == {"sft": 1, "guard_model": 1, "guard": 2}


def test_extra_training_rows_keep_oracle_labels(small_cfg):
    from saferlhfv.data.oracle import judge
    from saferlhfv.train.guard import guard_rows, misname_rows, typographic_rows

    base = guard_rows(small_cfg, "train")
    typo = typographic_rows(small_cfg, 2, base.features)
    assert len(typo) == 2 * 2 * 2  # 2 categories x 2 items x (input, output)
    for r in typo:
        ctx = json.loads(r["context"])
        assert ctx["variant"] == "sign" and r["category"] in small_cfg.data.configs
        unsafe = ctx["harmful"] if r["mode"] == "input" else judge(ctx, r["response"])[1] < 0
        assert r["is_unsafe"] == unsafe
    renamed = misname_rows(base, 1.0, seed=0)
    changed = [(a, b) for a, b in zip(base, renamed) if a["response"] != b["response"]]
    assert changed and all(a["mode"] == "output" for a, _ in changed)
    for _, b in changed:
        ctx = json.loads(b["context"])
        harmless = judge(ctx, b["response"])[1]
        assert b["is_unsafe"] == (harmless < 0) and b["severity"] == max(0, -harmless)
    assert misname_rows(base, 0.0) is base
