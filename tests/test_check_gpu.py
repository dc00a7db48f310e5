"""`python -m saferlhfv.check_gpu`: without CUDA it lists its steps and exits 0; the steps are valid configs of
the stages it names; on the CPU (``--device cpu``) one family runs end to end."""

import math
from pathlib import Path

import pytest
import torch

from saferlhfv.check_gpu import FAMILIES, main, plan_steps, run_steps
from saferlhfv.config import load_config


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_without_cuda_it_says_so_lists_the_steps_and_exits_0(no_cuda, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no CUDA GPU found") and "nothing was run" in out
    for name in ("SFT", "RM-V", "CM-V", "PPO-Lagrangian, shared base", "SFT, full fine-tuning, ZeRO-2",
                 "safe GRPO, separate models (the actor trains), ZeRO-2"):  # fmt: skip
        assert name in out
    assert "accelerate launch --config_file" in out and "accelerate/zero2.yaml --num_processes 1" in out
    assert all(f"model.tiny_arch={family}" in out for family in FAMILIES)
    assert out.count("\n 1. ") == 1 and "\n20. " in out  # 4 families x 4 steps, then the launched SFT, RM-V, CM-V, GRPO


def test_asking_for_cuda_without_it_is_an_error(no_cuda, capsys):
    assert main(["--device", "cuda"]) == 1
    assert "no CUDA GPU found" in capsys.readouterr().out


def test_dry_run_lists_one_family_without_the_launch(capsys):
    assert main(["--dry-run", "--families", "qwen2_5_vl", "--no-launch", "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA" not in out and "accelerate launch" not in out
    assert " 4. [qwen2_5_vl] PPO-Lagrangian, shared base + 5 adapters, 2 iterations" in out and "\n 5. " not in out


def test_planned_steps_are_the_stages_with_valid_configs():
    steps = plan_steps(FAMILIES, iterations=2)
    assert [s.stage for s in steps] == ["sft", "reward", "cost", "ppo"] * (len(FAMILIES) + 1)
    assert [s.family for s in steps[::4]] == [*FAMILIES, FAMILIES[0]]
    for step in steps:
        cfg = load_config("tiny", overrides=list(step.overrides))  # every key exists, every value parses
        assert cfg.model.tiny_arch == step.family and cfg.model.dtype == "bfloat16" and cfg.ppo.iterations == 2
    shared, sft_launch, launch = steps[3], steps[-4], steps[-1]
    shared_cfg, launch_cfg = (load_config("tiny", overrides=list(s.overrides)) for s in (shared, launch))
    assert not shared.launch and shared_cfg.ppo.shared_base and shared_cfg.model.lora.enabled
    assert not launch_cfg.ppo.shared_base and not launch_cfg.model.lora.enabled  # separate models, full fine-tuning
    # DeepSpeed prepares one model: the launched PPO method is safe GRPO, whose only trained role is the actor
    assert launch_cfg.ppo.algorithm == "grpo_lag" and launch_cfg.ppo.samples_per_prompt == 2
    for step in (sft_launch, launch):
        config_file = Path(step.launch[step.launch.index("--config_file") + 1])
        assert config_file.name == "zero2.yaml" and config_file.is_file()
        assert step.launch[step.launch.index("--num_processes") + 1] == "1"
        assert step.command()[:2] == ["accelerate", "launch"] and "saferlhfv.run" in step.command()
    # RM-V and CM-V of the launch train in this process, with the launched SFT's (full fine-tuning) config
    assert all(s.overrides == sft_launch.overrides and not s.launch for s in steps[-3:-1])
    with pytest.raises(ValueError, match="unknown families"):
        plan_steps(("llama",))


@pytest.mark.slow
def test_cpu_mode_runs_one_family_end_to_end(tmp_path, capsys):
    """SFT, RM-V, CM-V and one PPO-Lagrangian iteration in the shared-base layout, float32 (about 15 s)."""
    steps = plan_steps(("llava",), iterations=1, dtype="float32", launch=False)
    results = run_steps(steps, device="cpu", artifacts=tmp_path)
    assert [r.status for r in results] == ["ok"] * 4, [r.status for r in results]
    assert all(r.seconds > 0 and r.peak_mib > 0 for r in results)
    ppo = results[-1].metrics
    assert ppo["iterations"] == 1 and math.isfinite(ppo["final_lambda"])
    folders = sorted(p.parent.name.split("-")[0] for p in tmp_path.glob("tiny/*/result.json"))
    # the four stages, and the precursor's answers that the PPO stage compares its policy with (cached)
    assert folders == ["cost", "ppo", "precursor_eval", "reward", "sft"]
    out = capsys.readouterr().out
    assert out.count("  ok") == 4
