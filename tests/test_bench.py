"""`python -m saferlhfv.bench`: every part on a very small config, stage times from artifacts, role memory."""

import json

import pytest
import torch

from saferlhfv.bench import (
    MEMORY_LAYOUTS,
    format_report,
    main,
    stage_times,
)
from saferlhfv.config import apply_overrides, load_config
from saferlhfv.stages import PIPELINE
from tests.helpers import SMALL_MODEL_AND_WORLD

SMALL = SMALL_MODEL_AND_WORLD
#: the memory check counts LoRA adapters of rank 4
MEMORY_SMALL = [*SMALL, "model.lora.r=4"]


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFERLHFV_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def test_cli_json_has_every_part(capsys, artifacts):
    """Every part through the command line, and the memory part's five layouts checked against counts made by
    hand (:func:`_check_role_memory`; a layout costs a process to measure, so they are measured once)."""
    args = ["--preset", "tiny", *[f"--set={o}" for o in MEMORY_SMALL], "--batch-size", "4", "--new-tokens", "4",
            "--repeats", "1", "--ppo-iterations", "1", "--no-live-stages", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for part in ("model", "score", "ppo", "methods", "stages", "memory"):
        assert part in out and "error" not in out[part], out.get(part)
    assert out["model"]["train_samples_per_s"] > 0 and out["model"]["generate_tokens_per_s"] > 0
    assert out["score"]["score_train_pairs_per_s"] > 0 and out["score"]["score_batch_pairs"] == 4
    assert out["ppo"]["ppo_episodes_per_s"] > 0 and out["ppo"]["ppo_upstream"].startswith("untrained")
    assert [r["stage"] for r in out["stages"]] == list(PIPELINE)
    assert all(r["source"] == "missing" for r in out["stages"])  # nothing trained in this folder
    assert [r["algorithm"] for r in out["methods"]] == ["ppo_lag", "reward_only", "repo", "grpo_lag", "grpo_repo"]
    assert all(r["ppo_episodes_per_s"] > 0 for r in out["methods"])
    assert out["peak_memory_mb"] > 0
    _check_role_memory(load_config("tiny", overrides=MEMORY_SMALL), out["memory"])
    text = format_report(out)
    for needle in ("SFT train step", "RM-V / CM-V", "PPO-Lagrangian iteration", "generation, KV cache",
                   "pipeline stages", "six separate models", "shared base + 5 LoRA adapters", "peak memory",
                   "PPO methods", "safe GRPO"):  # fmt: skip
        assert needle in text


def test_stage_times_from_artifacts_and_summary(artifacts, tmp_path):
    from saferlhfv.stages import artifact_dir

    cfg = load_config("tiny", overrides=SMALL)
    sft = artifact_dir(cfg, "sft")
    sft.mkdir(parents=True)
    (sft / "result.json").write_text(json.dumps({"steps": 10, "seconds": 4.0}))
    ppo = artifact_dir(apply_overrides(cfg, {"ppo.algorithm": "reward_only"}), "ppo")
    ppo.mkdir(parents=True)
    (ppo / "result.json").write_text(json.dumps({"iterations": 5, "seconds": 10.0}))
    rows = {r["stage"]: r for r in stage_times(cfg, live=False)}
    assert rows["sft"]["samples"] == 10 * cfg.sft.batch_size and rows["sft"]["unit"] == "sequences"
    assert rows["sft"]["samples_per_s"] == pytest.approx(10 * cfg.sft.batch_size / 4.0, rel=1e-3)
    assert rows["ppo_reward_only"]["samples"] == 5 * 4 and rows["ppo_reward_only"]["unit"] == "episodes"
    assert rows["ppo_lag"]["source"] == "missing" and rows["ppo_lag"]["seconds"] is None
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"stages": ["sft"], "sft": {"seconds": 8.0, "steps": 10}}))
    rows = {r["stage"]: r for r in stage_times(cfg, summary=summary, live=False)}
    assert rows["sft"]["seconds"] == 8.0 and rows["sft"]["source"] == "summary.json"


def _check_role_memory(cfg, m) -> None:
    """:func:`role_memory`'s result ``m`` for ``cfg``: weights, trainable parameters and optimiser state of
    each layout against counts made here from the model itself."""
    from saferlhfv.data.world import text_corpus
    from saferlhfv.models.factory import apply_lora, load_vlm

    rows = {r["layout"]: r for r in m["layouts"]}
    assert list(rows) == [name for name, _ in MEMORY_LAYOUTS]
    separate, lora, shared, grpo, grpo_shared = rows.values()
    model, _ = load_vlm(cfg.model, text_corpus(cfg.data))
    params = sum(p.numel() for p in model.parameters())
    vlm = params * 4 + sum(b.numel() * b.element_size() for b in model.buffers())
    head = (cfg.model.tiny_hidden_size + 1) * 4
    # six whole models + four heads, against one base + five peft adapters + four heads
    assert separate["weights_mb"] == pytest.approx((6 * vlm + 4 * head) / 2**20, abs=0.01)
    adapter = sum(p.numel() for n, p in apply_lora(model, cfg.model.lora).named_parameters() if "lora_" in n)
    assert shared["weights_mb"] == pytest.approx((vlm + 5 * adapter * 4 + 4 * head) / 2**20, abs=0.01)
    assert lora["weights_mb"] == pytest.approx((6 * vlm + 3 * adapter * 4 + 4 * head) / 2**20, abs=0.01)
    # the same adapters train in both LoRA layouts; full fine-tuning trains every weight of three models
    assert shared["trainable_parameters"] == lora["trainable_parameters"] == 3 * adapter + 2 * (head // 4)
    assert separate["trainable_parameters"] > 2 * params
    # gradients + two AdamW moments per trainable weight
    assert shared["train_state_mb"] == pytest.approx(3 * shared["trainable_parameters"] * 4 / 2**20, abs=0.01)
    # safe GRPO: no critics, so four models (two heads) and only the actor trains
    assert grpo["weights_mb"] == pytest.approx((4 * vlm + 2 * head) / 2**20, abs=0.01)
    assert grpo["trainable_parameters"] == params and grpo_shared["trainable_parameters"] == adapter
    assert grpo_shared["weights_mb"] == pytest.approx((vlm + 3 * adapter * 4 + 2 * head) / 2**20, abs=0.01)
    ratio = grpo["train_state_mb"] / separate["train_state_mb"]
    assert m["grpo_over_ppo_train_state"] == pytest.approx(ratio, abs=2e-3)
    assert m["grpo_over_ppo_train_state"] < 0.4  # one trained model's state instead of three
    assert all(r["peak_mb"] > 0 for r in m["layouts"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ppo_bench_on_gpu(artifacts):
    from saferlhfv.bench import bench_ppo

    out = bench_ppo(load_config("tiny", overrides=SMALL), iterations=1)
    assert out["ppo_episodes_per_s"] > 0 and out["ppo_six_roles_built_memory_mb"] > 0


def test_concurrent_jobs_share_the_cores(artifacts):
    """Two worker processes at once each take their share of the cores; one alone takes them all."""
    from saferlhfv.bench.concurrent import concurrent_jobs
    from saferlhfv.threads import available_cores, threads_for

    cfg = load_config("tiny", overrides=SMALL)
    out = concurrent_jobs(cfg, jobs=(1, 2), policies=("on",), rounds=2, batch_size=2, new_tokens=2)
    runs = {r["jobs"]: r for r in out["runs"]}
    for n in (1, 2):
        assert runs[n]["threads_per_job"] == [threads_for(available_cores(), n)]
        assert runs[n]["rounds_per_s"] > 0
    assert runs[1]["ratio"] == 1.0 and runs[2]["ratio"] > 0
    assert "jobs at once" in format_report({"preset": "tiny", "device": "cpu", "threads": 1, "concurrent": out})
