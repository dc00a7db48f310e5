"""Shared-base mode: the six PPO roles as LoRA adapters on one frozen SFT model."""

import pytest
import torch

from saferlhfv.config import ConfigError, load_config
from saferlhfv.data.world import rl_prompts
from saferlhfv.models.factory import load_saved_vlm
from saferlhfv.models.generation import encode_prompts, token_logprobs
from saferlhfv.models.score import ADAPTER_DIR, load_score_model
from saferlhfv.models.shared import SharedBase
from saferlhfv.train.ppo import make_trainer
from tests.helpers import SMALL_MODEL_AND_WORLD, interrupt_and_resume, run_ppo_two_processes, upstream_artifacts

SMALL = SMALL_MODEL_AND_WORLD + [
    "sft.max_steps=6",
    "reward.max_steps=3",
    "cost.max_steps=3",
    "ppo.iterations=3",
    "ppo.save_every=1",
    "model.lora.enabled=true",
    "model.lora.r=4",
    "model.lora.alpha=8",
]
SHARED = SMALL + ["ppo.shared_base=true"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """SFT (every weight) and RM-V / CM-V trained as LoRA adapters, once for this module."""
    art = tmp_path_factory.mktemp("artifacts")
    with upstream_artifacts(art, SMALL) as dirs:
        yield art, dirs


def _batch(processor, cfg, n=3):
    rows = rl_prompts(cfg.data, "evaluation").select(range(n))
    answers = ["I can't help with that.", "the picture shows a knife.", "sure, here is how."][:n]
    return encode_prompts(processor, list(rows["image"]), list(rows["question"]), answers, padding_side="right")


def test_lora_stages_save_plain_models_and_adapters(upstream):
    """SFT of the tiny model trains every weight; RM-V / CM-V save a merged backbone plus their adapter."""
    _, dirs = upstream
    sft, _ = load_saved_vlm(dirs["sft_dir"] / "model")
    assert not any("lora_" in n for n, _ in sft.named_parameters())
    for kind in ("reward_dir", "cost_dir"):
        folder = dirs[kind] / "model"
        assert (folder / ADAPTER_DIR / "adapter_config.json").is_file()
        merged, _ = load_score_model(folder)  # loads without peft: the adapter is merged in
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        # the adapter really changed the language model (B is no longer zero after training)
        diff = [
            (a - b).abs().max().item()
            for (n, a), (_, b) in zip(merged.backbone.named_parameters(), sft.named_parameters())
            if "language_model" in n and "q_proj" in n
        ]
        assert max(diff) > 0
        assert all(
            torch.equal(a, b)
            for (n, a), (_, b) in zip(merged.backbone.named_parameters(), sft.named_parameters())
            if "vision" in n or "embed_tokens" in n
        )


def test_roles_equal_the_separate_models(upstream):
    """Reference = SFT model, actor = SFT at start, RM-V / CM-V / critics = the saved score models."""
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SHARED)
    base, processor = load_saved_vlm(dirs["sft_dir"] / "model")
    sft, _ = load_saved_vlm(dirs["sft_dir"] / "model")
    shared = SharedBase(
        base, actor_lora=cfg.model.lora, reward_dir=dirs["reward_dir"] / "model", cost_dir=dirs["cost_dir"] / "model"
    )
    batch = _batch(processor, cfg)
    vision = {k: batch[k] for k in ("pixel_values",)}
    with torch.no_grad():
        want, _ = token_logprobs(sft.eval(), batch["input_ids"], batch["attention_mask"], vision)
        for role in ("actor", None):
            got, _ = token_logprobs(shared.policy(role), batch["input_ids"], batch["attention_mask"], vision)
            torch.testing.assert_close(got, want)
        for kind in ("reward", "cost"):
            separate, _ = load_score_model(dirs[f"{kind}_dir"] / "model")
            want_scores = separate.eval()(**batch).end_scores
            assert want_scores.std() > 0
            for role in (kind, f"{kind}_critic"):
                got_scores = shared.scorer(role)(**batch).end_scores
                torch.testing.assert_close(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    # only the adapters and heads are trainable, and they are small next to the base
    trainable = sum(p.numel() for r in ("actor", "reward_critic", "cost_critic") for p in shared.role_parameters(r))
    base_size = sum(p.numel() for n, p in shared.named_parameters() if "lora_" not in n)
    assert 0 < trainable < base_size / 5


def _named(trainer):
    return {n: p.detach().clone() for n, p in trainer.roles.shared.named_parameters()}


def test_shared_base_trains_only_adapters_and_resumes(upstream, tmp_path):
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SHARED)
    trainer = make_trainer(cfg, out_dir=tmp_path / "a", **dirs)
    before = _named(trainer)
    done = trainer.train()
    after = _named(trainer)
    assert done["iterations"] == 3
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "nothing trained"
    trained = ("actor", "reward_critic", "cost_critic")

    def owner(name):  # the trainable role a changed tensor belongs to, or None
        return next((r for r in trained if f".{r}." in name or name.startswith(f"heads.{r}.")), None)

    assert all(owner(n) is not None for n in changed), changed  # the base, RM-V and CM-V stay frozen
    assert {owner(n) for n in changed} == set(trained)

    resumed, again = interrupt_and_resume(cfg, dirs, tmp_path / "b")
    assert again["iterations"] == 3 and again["final_lambda"] == pytest.approx(done["final_lambda"], rel=1e-9)
    resumed_params = _named(resumed)
    for name in changed:
        torch.testing.assert_close(resumed_params[name], after[name])

    # the saved policy is the merged actor: a plain model giving the actor's log-probs
    trainer.save_policy(tmp_path / "policy")
    saved, processor = load_saved_vlm(tmp_path / "policy")
    batch = _batch(processor, cfg)
    args = (batch["input_ids"], batch["attention_mask"], {"pixel_values": batch["pixel_values"]})
    with torch.no_grad():
        expected = token_logprobs(trainer.roles.actor, *args)[0]
        torch.testing.assert_close(token_logprobs(saved.eval(), *args)[0], expected)


def test_shared_base_needs_lora_adapters(upstream, tmp_path):
    _, dirs = upstream
    no_lora = load_config("tiny", overrides=SMALL_MODEL_AND_WORLD + ["ppo.shared_base=true"])
    with pytest.raises(ConfigError, match="model.lora.enabled=true"):
        make_trainer(no_lora, out_dir=tmp_path / "a", **dirs)
    full = dict(dirs, reward_dir=tmp_path / "reward")
    (tmp_path / "reward" / "model").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        make_trainer(load_config("tiny", overrides=SHARED), out_dir=tmp_path / "b", **full)


def test_shared_base_two_processes_agree(upstream, tmp_path):
    """Gradients of the active adapter are averaged by hand: both ranks end with the same adapters."""
    art, _ = upstream
    result = run_ppo_two_processes(art, tmp_path / "ppo", SHARED + ["ppo.iterations=2"])
    assert result["processes"] == 2 and result["ranks_agree"] is True and result["iterations"] == 2


def test_fused_critics_train_both_adapters_as_the_two_pass_path_does(upstream, tmp_path, monkeypatch):
    """One minibatch per iteration: both critics' graphs are built before either backward. Activating the cost
    critic's adapter turns the reward critic's weights off (peft), and autograd then skips them: each backward
    must run with its own adapter active (Roles.before_backward), or the reward critic would never train."""
    from saferlhfv.train.ppo.trainer import PPOTrainer

    _, dirs = upstream
    cfg = load_config("tiny", overrides=SHARED + ["ppo.batch_size=4", "ppo.iterations=2"])
    fused = make_trainer(cfg, out_dir=tmp_path / "fused", **dirs)
    before = _named(fused)
    fused.train()
    monkeypatch.setattr(PPOTrainer, "fused_critics", property(lambda self: False))
    two_pass = make_trainer(cfg, out_dir=tmp_path / "two-pass", **dirs)
    two_pass.train()
    got, want = _named(fused), _named(two_pass)
    for role in ("actor", "reward_critic", "cost_critic"):
        names = [n for n in before if f".{role}." in n or n.startswith(f"heads.{role}.")]
        assert any(not torch.equal(before[n], got[n]) for n in names if "lora_" in n), f"{role}'s adapter did not train"
        for n in names:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
