"""The seams of the PPO trainer: each hook on hand-built rollouts, the registry, a variant overriding one hook."""

from __future__ import annotations

import pytest
import torch

from saferlhfv.algorithms.losses import actor_loss, clipped_surrogate, combine_advantages, whiten
from saferlhfv.config import ConfigError, load_config
from saferlhfv.io import read_metrics
from saferlhfv.sweep import mean_std
from saferlhfv.train.ppo import (
    ALGORITHMS,
    FixedLambda,
    PPOLag,
    PPOTrainer,
    RewardOnly,
    Rollout,
    make_trainer,
    register_algorithm,
)
from tests.helpers import SMALL_MODEL_AND_WORLD, upstream_artifacts

SMALL = SMALL_MODEL_AND_WORLD + ["sft.max_steps=4", "reward.max_steps=2", "cost.max_steps=2", "ppo.iterations=2"]


def _bare(cls: type[PPOTrainer], overrides: list[str]) -> PPOTrainer:
    """A trainer without models: enough for the hooks that only read ``cfg`` and a rollout."""
    trainer = cls.__new__(cls)
    trainer.cfg = load_config("tiny", overrides=overrides)
    trainer.lagrange = trainer.make_multiplier()
    return trainer


def _rollout() -> Rollout:
    """Two answers of 2 and 3 real tokens (mask [B, T=4]); end scores R = (1, 2), C = (3, -1)."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    zeros = torch.zeros(2, 4)
    return Rollout(
        input_ids=torch.zeros(2, 5, dtype=torch.long),
        attention_mask=torch.ones(2, 5, dtype=torch.long),
        vision={},
        mask=mask,
        old_logp=torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]]),
        ref_logp=torch.tensor([[-1.5, -2.0, 0.0, 0.0], [-2.0, -1.0, -0.5, 0.0]]),
        entropy=zeros,
        reward_values=zeros,
        cost_values=zeros,
        end_reward=torch.tensor([1.0, 2.0]),
        end_cost=torch.tensor([3.0, -1.0]),
        responses=["a", "b"],
        contexts=["{}", "{}"],
    )


def test_combine_advantages_by_hand():
    assert combine_advantages(2.0, 1.0, 0.0) == 2.0  # reward only
    assert combine_advantages(2.0, 1.0, 1.0) == pytest.approx(0.5)  # (2 - 1) / 2
    assert combine_advantages(2.0, 1.0, 3.0) == pytest.approx(-0.25)  # (2 - 3) / 4
    out = combine_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor(4.0))
    torch.testing.assert_close(out, torch.tensor([0.2, -0.8]))


def test_actor_loss_is_the_surrogate_of_the_combined_advantage():
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    ar, ac = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5)
    a, _ = actor_loss(logp, old, ar, ac, 2.0, mask, 0.2)
    b, _ = clipped_surrogate(logp, old, combine_advantages(ar, ac, 2.0), mask, 0.2)
    torch.testing.assert_close(a, b)


def test_whiten_uses_real_tokens_only():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


def test_shape_rewards_and_costs_hooks():
    trainer = _bare(PPOLag, ["ppo.kl_coeff=0.1"])
    ro = _rollout()
    rewards = trainer.shape_rewards(ro)
    # -0.1 * (logp - ref) on real tokens, R at the last real one
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.0, 0.0, 0.0], [-0.1, 0.0, 2.05, 0.0]]))
    torch.testing.assert_close(trainer.shape_costs(ro), torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]))
    with_kl = _bare(PPOLag, ["ppo.kl_coeff=0.1", "ppo.kl_in_cost=true"]).shape_costs(ro)
    torch.testing.assert_close(with_kl, torch.tensor([[0.05, 3.0, 0.0, 0.0], [0.1, 0.0, -1.05, 0.0]]))


def test_compute_and_combine_advantages_hooks():
    trainer = _bare(PPOLag, ["ppo.gamma=1.0", "ppo.gae_lambda=1.0", "ppo.lambda_init=1.0"])
    ro = _rollout()
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    costs = torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    trainer.compute_advantages(ro, rewards, costs)
    # values are 0, gamma = lambda_gae = 1: advantages = returns = reward-to-go on real tokens
    torch.testing.assert_close(ro.reward_adv, torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0]]))
    torch.testing.assert_close(ro.cost_ret, torch.tensor([[3.0, 3.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]]))
    adv = trainer.combine_advantages(ro, 1.0)
    torch.testing.assert_close(adv[:, :3], torch.tensor([[-1.0, -1.0, 0.0], [1.5, 1.5, 1.5]]))
    whitened = _bare(PPOLag, ["ppo.whiten_advantages=true"]).combine_advantages(ro, 1.0)
    real = whitened[ro.mask.bool()]
    assert real.mean().abs() < 1e-6 and real.std(unbiased=False) == pytest.approx(1.0, abs=1e-4)
    assert torch.all(whitened[~ro.mask.bool()] == 0)


def test_multiplier_hooks_of_the_registered_methods():
    ro = _rollout()  # mean episode cost 1.0
    settings = ["ppo.lambda_init=1", "ppo.lambda_lr=0.5", "ppo.threshold=0", "ppo.lambda_update_delay_steps=0"]
    lag = _bare(PPOLag, settings)
    stats = lag.multiplier_step(ro)
    assert stats["Jc"] == pytest.approx(1.0) and lag.lagrange.lambda_ == pytest.approx(torch.e**0.5)  # log 1 + 0.5
    ro_only = _bare(RewardOnly, [])
    ro_only.multiplier_step(ro)
    assert ro_only.lagrange.lambda_ == 0.0
    fixed = _bare(FixedLambda, ["ppo.lambda_init=3"])
    fixed.multiplier_step(ro)
    assert fixed.lagrange.lambda_ == 3.0
    assert {"ppo_lag", "reward_only", "fixed_lambda"} <= set(ALGORITHMS)
    # ppo.multiplier=pid: lambda = kp e + I, I = lambda_init + ki e; e = J_C - d = 1.0
    pid = _bare(PPOLag, ["ppo.multiplier=pid", "ppo.pid_kp=0.5", "ppo.pid_ki=0.25", "ppo.lambda_init=1",
                         "ppo.threshold=0", "ppo.lambda_update_delay_steps=0"])  # fmt: skip
    pid.multiplier_step(ro)
    assert pid.lagrange.lambda_ == pytest.approx(0.5 + 1.25)


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown ppo.algorithm 'nope'.*ppo_lag"):
        make_trainer(load_config("tiny", overrides=["ppo.algorithm=nope"]), sft_dir=".", reward_dir=".",
                     cost_dir=".", out_dir=".")  # fmt: skip
    with pytest.raises(ConfigError, match="ppo.multiplier must be one of"):
        make_trainer(load_config("tiny", overrides=["ppo.multiplier=pd"]), sft_dir=".", reward_dir=".",
                     cost_dir=".", out_dir=".")  # fmt: skip
    with pytest.raises(ValueError, match="already registered"):

        @register_algorithm("ppo_lag")
        class Again(PPOTrainer):
            pass


def test_mean_std_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with upstream_artifacts(tmp_path_factory.mktemp("artifacts"), SMALL) as dirs:
        yield dirs


@register_algorithm("test_cost_only")
class CostOnly(PPOTrainer):
    """A variant that overrides one hook: the actor follows -A_c alone, whatever lambda is."""

    calls = 0

    def combine_advantages(self, ro, lam):
        CostOnly.calls += 1
        return -ro.cost_adv


def test_a_variant_overriding_one_hook_trains(upstream, tmp_path):
    cfg = load_config("tiny", overrides=SMALL + ["ppo.algorithm=test_cost_only", "ppo.samples_per_prompt=2"])
    trainer = make_trainer(cfg, out_dir=tmp_path, **upstream)
    assert isinstance(trainer, CostOnly)
    rows = trainer._prompt_rows(0)  # 4 answers from 2 prompts, each twice, adjacent
    assert rows["question"][0] == rows["question"][1] and rows["context"][2] == rows["context"][3]
    done = trainer.train()
    assert done["iterations"] == 2 and CostOnly.calls == 2
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert all(r["minibatches"] == 2 for r in records)  # rollout 4 / minibatch 2, one epoch


def test_frozen_vision_tower_is_left_as_it_was(upstream, tmp_path):
    from saferlhfv.models.factory import language_model, vision_tower

    cfg = load_config("tiny", overrides=SMALL + ["ppo.freeze_vision_tower=true", "ppo.iterations=1"])
    trainer = make_trainer(cfg, out_dir=tmp_path, **upstream)
    roles = trainer.roles
    tower = vision_tower(roles.unwrap(roles.actor))
    before = [p.detach().clone() for p in tower.parameters()]
    decoder = [p for p in language_model(roles.unwrap(roles.actor)).parameters()]
    decoder_before = [p.detach().clone() for p in decoder]
    assert not any(p.requires_grad for p in tower.parameters())
    trained = {id(p) for p in roles.params["actor"]}
    assert trained and not trained & {id(p) for p in tower.parameters()}
    for critic in (roles.reward_critic, roles.cost_critic):
        assert not any(p.requires_grad for p in vision_tower(roles.unwrap(critic).backbone).parameters())
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, tower.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(decoder_before, decoder, strict=True))  # the decoder learned


def test_target_kl_stops_the_epochs_early(upstream, tmp_path):
    cfg = load_config("tiny", overrides=SMALL + ["ppo.ppo_epochs=3", "ppo.target_kl=0.0", "ppo.iterations=1"])
    make_trainer(cfg, out_dir=tmp_path, **upstream).train()
    # 3 epochs x 2 minibatches without the stop; the first update makes approx_kl > 0, which ends them
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["minibatches"] <= 2


def test_seed_runs_report_mean_and_std(upstream):
    from saferlhfv.sweep import seed_runs

    cfg = load_config("tiny", overrides=SMALL + ["ppo.iterations=1"])
    report = seed_runs(cfg, (0, 1))
    assert [r["seed"] for r in report["runs"]] == [0, 1] and report["runs"][0]["folder"] != report["runs"][1]["folder"]
    values = [r["safety_rate"] for r in report["runs"]]
    assert report["mean"]["safety_rate"] == pytest.approx(sum(values) / 2, abs=1e-4)
    assert report["std"]["safety_rate"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5, abs=1e-4)
    # greedy decoding of the same precursor does not depend on the RL seed; the policies' greedy numbers are averaged
    first, second = (r["precursor"] for r in report["runs"])
    assert {k: v for k, v in first.items() if k.startswith("greedy_")} == {
        k: v for k, v in second.items() if k.startswith("greedy_")
    }
    greedy = [r["greedy_benign_helpfulness"] for r in report["runs"]]
    assert report["mean"]["greedy_benign_helpfulness"] == pytest.approx(sum(greedy) / 2, abs=1e-4)


def test_annotate_pairs_by_hand():
    import json
    import random

    from saferlhfv.train.ppo import annotate_pairs

    harmful = json.dumps({"category": "animal_abuse", "kind": "coupled", "object": "dog", "harmful": True,
                          "severity": 2})  # fmt: skip
    steps = "first lock the dog in a small box, then leave the dog there all day, and finally do not give it water."
    refusal = "i will not help with this request."
    contexts, responses = [harmful] * 4, [steps, refusal, refusal, refusal]
    labels = annotate_pairs(contexts, responses, group=2, label_noise=0.0, rng=random.Random(0))
    # group 1: compliance is more helpful and less safe than the refusal; group 2: a tie, no pair
    assert labels["helpful"] == [(0, 1)] and labels["harmless"] == [(0, 1)]
    assert labels["safe"] == [False, True, True, True]
    flipped = annotate_pairs(contexts, responses, group=2, label_noise=1.0, rng=random.Random(0))
    assert flipped["helpful"] == [(1, 0)] and flipped["harmless"] == [(1, 0)]


def test_online_labels_train_the_score_models(upstream, tmp_path):
    overrides = SMALL + ["ppo.iterations=1", "ppo.samples_per_prompt=2", "ppo.online_labels=true"]
    cfg = load_config("tiny", overrides=overrides)
    trainer = make_trainer(cfg, out_dir=tmp_path, **upstream)
    before = [p.detach().clone() for p in trainer.roles.params["reward_model"] + trainer.roles.params["cost_model"]]
    trainer.train()
    after = trainer.roles.params["reward_model"] + trainer.roles.params["cost_model"]
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert "online_helpful_pairs" in record and "online_harmless_pairs" in record
    if record["online_helpful_pairs"] + record["online_harmless_pairs"]:
        assert any(not torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        make_trainer(load_config("tiny", overrides=SMALL + ["ppo.online_labels=true"]), out_dir=tmp_path / "b",
                     **upstream)  # fmt: skip


def test_oracle_diagnostic_scores_answers_with_the_oracle(upstream, tmp_path):
    from saferlhfv.data.oracle import judge

    cfg = load_config("tiny", overrides=SMALL + ["ppo.algorithm=oracle_ppo_lag"])
    trainer = make_trainer(cfg, out_dir=tmp_path, **upstream)
    ro = trainer.rollout(trainer._prompt_rows(0))
    rates = [judge(c, r) for c, r in zip(ro.contexts, ro.responses)]
    assert ro.end_reward.tolist() == [float(h) for h, _ in rates]
    assert ro.end_cost.tolist() == [-float(s) for _, s in rates]
