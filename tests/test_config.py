"""Presets load, overrides apply, unknown keys and wrong types fail loudly."""

import argparse

import pytest

from saferlhfv.config import (
    PRESETS,
    Config,
    ConfigError,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    load_config,
    replicate_seed,
)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config) and cfg.preset == name


def test_paper_preset_has_the_paper_code_defaults():
    ppo = load_config("paper").ppo
    assert (ppo.lambda_init, ppo.lambda_max, ppo.lambda_lr, ppo.lambda_update_delay_steps) == (10.0, 20.0, 0.1, 1)
    assert (ppo.cost_window, ppo.threshold, ppo.kl_coeff, ppo.clip_range_ratio) == (128, -0.5, 0.02, 0.2)
    assert (ppo.clip_range_value, ppo.clip_range_score, ppo.gamma, ppo.gae_lambda) == (5.0, 50.0, 1.0, 0.95)
    # the optimiser of the public trainer (saferlhf-v's safe_rlhf_v.yaml), not this project's tiny-model choices
    assert (ppo.learning_rate, ppo.critic_learning_rate, ppo.lr_scheduler, ppo.lr_warmup_ratio) == (
        5e-7, 5e-7, "cosine", 0.03)  # fmt: skip
    assert (ppo.adam_beta2, ppo.weight_decay, ppo.max_grad_norm, ppo.ppo_epochs) == (0.95, 0.0, 1.0, 1)
    assert ppo.kl_in_cost is True and (ppo.rollout_batch_size, ppo.batch_size, ppo.max_new_tokens) == (16, 2, 512)
    assert (ppo.temperature, ppo.top_p) == (1.0, 1.0)
    model = load_config("paper").model
    assert model.freeze_vision_tower and model.dtype == "bfloat16"


def test_overrides_from_dict_and_strings():
    cfg = load_config("tiny", overrides={"ppo.lambda_init": 5, "model.lora.r": 4})
    assert cfg.ppo.lambda_init == 5.0 and isinstance(cfg.ppo.lambda_init, float) and cfg.model.lora.r == 4
    cfg = load_config(
        "tiny", overrides=["data.configs=[animal_abuse, violence_and_physical_harm]", "ppo.lambda_max=null"]
    )
    assert cfg.data.configs == ["animal_abuse", "violence_and_physical_harm"] and cfg.ppo.lambda_max is None
    assert load_config("tiny").ppo.lambda_init != 5.0  # the preset itself is untouched


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo\.lambda_lrr'; did you mean 'lambda_lr'"):
        load_config("tiny", overrides={"ppo.lambda_lrr": 0.5})
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'"):
        config_from_dict({"optimizer": {"lr": 1}})


def test_unknown_key_in_a_preset_file_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  family: tiny\n  tiny_hiden_size: 32\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown config key 'model\.tiny_hiden_size'"):
        load_config(path)


def test_wrong_types_fail():
    with pytest.raises(ConfigError, match="'sft.batch_size' must be an integer"):
        load_config("tiny", overrides={"sft.batch_size": "eight"})
    with pytest.raises(ConfigError, match="'ppo.kl_in_cost' must be true or false"):
        load_config("tiny", overrides={"ppo.kl_in_cost": 1})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")


def test_command_line_flags():
    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--preset", "tiny", "--set", "ppo.threshold=-0.5", "--set", "sft.epochs=2"])
    cfg = config_from_args(args)
    assert cfg.ppo.threshold == -0.5 and cfg.sft.epochs == 2


def test_fingerprint_tracks_sections():
    a, b = load_config("tiny"), load_config("tiny", overrides={"ppo.lambda_lr": 0.2})
    assert a.fingerprint("sft") == b.fingerprint("sft") and a.fingerprint("ppo") != b.fingerprint("ppo")


def test_ppo_declares_only_what_it_reads():
    # PPO counts iterations, not epochs: a dataset-epoch field there used to be accepted and ignored
    for key in ("epochs", "max_steps", "warmup_ratio", "eval_every", "gradient_accumulation_steps"):
        with pytest.raises(ConfigError, match=f"unknown config key 'ppo.{key}'"):
            load_config("tiny", {f"ppo.{key}": 1})
    assert load_config("tiny", {"ppo.batch_size": 4}).ppo.batch_size == 4


def _config_classes():
    import dataclasses

    seen, todo = [], [Config]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += [f.default_factory for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default_factory)]
    return seen


def test_every_config_field_has_a_one_line_help():
    from saferlhfv.config import field_help

    classes = _config_classes()
    assert len(classes) == 13  # Config and its twelve sections (model.lora included)
    for cls in classes:
        missing = [name for name, text in field_help(cls).items() if not text]
        assert not missing, f"{cls.__name__} fields without a #: help comment: {missing}"
    # a sibling field shares the comment above its pair; an unrelated next field does not
    data = field_help(type(Config().data))
    assert data["pairs_per_category_eval"] == data["pairs_per_category_train"]
    assert field_help(type(Config().ppo))["ppo_epochs"] != field_help(type(Config().ppo))["rollout_batch_size"]


def test_help_lists_every_key_with_default_and_help(capsys):
    parser = add_config_arguments(argparse.ArgumentParser(prog="x"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "  ppo.threshold = -0.5  the budget d on the expected episode cost." in out
    assert "  model.lora.r = 16  rank of the LoRA update matrices." in out
    assert "  seed = 0  the run's training seed" in out


def test_one_training_seed_at_the_top():
    # stage and model seeds derive from the top-level seed; data.seed names the world; ppo.seed,
    # monitor.seed and guard.seed are replicates of a downstream stage on a shared precursor
    for key in ("model.seed", "sft.seed", "reward.seed", "cost.seed"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            load_config("tiny", {key: 1})
    cfg = load_config("tiny", {"seed": 3, "data.seed": 4, "ppo.seed": 5, "guard.seed": 6})
    assert (cfg.seed, cfg.data.seed, cfg.ppo.seed) == (3, 4, 5)
    assert replicate_seed(cfg, "ppo") == 3 * 1009 + 5 and replicate_seed(cfg, "guard") == 3 * 1009 + 6
    assert replicate_seed(load_config("tiny"), "monitor") == 0  # the defaults: the top-level seed's run
