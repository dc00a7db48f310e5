"""The stage table (`saferlhfv.stages`) and the one command line over it (`python -m saferlhfv.run`)."""

import json

import pytest

import saferlhfv.train.preference as preference_stage
import saferlhfv.train.sft as sft_stage
from saferlhfv.config import apply_overrides, load_config
from saferlhfv.run import main
from saferlhfv.stages import PIPELINE, PPO_METHODS, STAGES, artifact_dir, config_sections, ensure, resolve, stage


@pytest.fixture
def fake_builds(tmp_path, monkeypatch):
    """SFT and RM-V builds that only count their calls and record what they were given."""
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "art"))
    calls = []

    def fake_sft(cfg, folder, *, resume=True):
        calls.append(("sft", resume))
        (folder / "model").mkdir(parents=True, exist_ok=True)
        return {"steps": 3, "seconds": 0.1}

    def fake_preference(cfg, kind, folder, sft_dir, *, resume=True):
        calls.append((kind, sft_dir.name.split("-")[0]))
        return {"eval_accuracy": 0.75, "per_category_accuracy": {"a": 1.0}}

    monkeypatch.setattr(sft_stage, "train_sft", fake_sft)
    monkeypatch.setattr(preference_stage, "train_preference_model", fake_preference)
    return calls


def test_every_upstream_comes_before_its_stage_and_sections_close_over_them():
    names = list(STAGES)
    for s in STAGES.values():
        owners = [resolve(up, load_config("tiny"))[0].name for up in s.upstream]  # a variant's stage
        assert all(names.index(up) < names.index(s.name) for up in owners), s.name
    assert config_sections("reward") == ("seed", "model", "data", "sft", "reward")
    # an upstream variant (ppo_lag) contributes its stage's sections
    assert config_sections("shiftdc") == ("seed", "model", "data", "sft", "reward", "cost", "ppo", "shiftdc")
    assert PIPELINE == (
        "sft",
        "reward",
        "cost",
        "guard_model",
        "guard",
        *PPO_METHODS,
        "ppo_lag_text",
        "monitor",
        "shiftdc",
        "safety_neurons",
    )


def test_variants_resolve_to_their_stage_with_overrides():
    cfg = load_config("tiny")
    s, grpo = resolve("ppo_grpo_lag", cfg)
    assert s.name == "ppo" and grpo.ppo.algorithm == "grpo_lag" and grpo.ppo.samples_per_prompt == 4
    assert resolve("sft", cfg) == (STAGES["sft"], cfg)
    # a variant's artifact is its stage's under the variant's overrides (what a downstream stage reads)
    reward_only = apply_overrides(cfg, {"ppo.algorithm": "reward_only"})
    assert artifact_dir(cfg, "ppo_reward_only") == artifact_dir(reward_only, "ppo") != artifact_dir(cfg, "ppo")
    with pytest.raises(ValueError, match="unknown stage 'rl'.*known"):
        stage("rl")


def test_ensure_trains_upstream_once_then_reuses(fake_builds):
    cfg = load_config("tiny")
    folder, metrics = ensure("reward", cfg)
    again, _ = ensure("reward", cfg)
    assert folder == again and metrics["eval_accuracy"] == 0.75
    assert fake_builds == [("sft", True), ("reward", "sft")]  # SFT first, each built once
    ensure("reward", cfg, force=True)
    assert fake_builds[-1] == ("reward", "sft") and len(fake_builds) == 3  # forced: only the stage itself


def test_cli_out_folder_writes_result_and_prints_json(fake_builds, tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(["reward", "--preset", "tiny", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "result.json").read_text()) and "per_category_accuracy" in printed
    assert (out / "config.yaml").is_file()
    assert main(["reward", "--preset", "tiny"]) == 0  # the cached artifact, short print without tables
    text = capsys.readouterr().out
    assert "per_category_accuracy" not in text and "artifact:" in text


def test_cli_rejects_seeds_for_a_stage_that_is_not_ppo(fake_builds):
    with pytest.raises(SystemExit, match="--seeds repeats the RL stage"):
        main(["sft", "--seeds", "0", "1"])


def test_cli_refuses_a_set_that_a_ppo_variant_would_replace():
    # ppo_repo fixes ppo.lambda_max: the user's value would be dropped without a word
    with pytest.raises(SystemExit, match=r"ppo_repo fixes ppo.lambda_max=5.0") as err:
        main(["ppo_repo", "--set", "ppo.lambda_max=2", "--set", "ppo.repo_tolerance=0.3"])
    expected = "run ppo --preset tiny --set ppo.algorithm=repo --set ppo.lambda_max=2 --set ppo.repo_tolerance=0.3"
    assert expected in str(err.value)
