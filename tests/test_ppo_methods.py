"""RePO and safe GRPO: their math on hand-computed tensors, their hooks, four roles, two processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saferlhfv.algorithms.losses import (
    budget_advantages,
    clipped_surrogate,
    group_advantages,
    prompt_rectified_costs,
    rectified_costs,
    reference_kl,
)
from saferlhfv.config import ConfigError, load_config
from saferlhfv.data.world import rl_prompts
from saferlhfv.data.world.text_carried import caption_question, neutral_picture
from saferlhfv.io import read_metrics
from saferlhfv.train.ppo import GRPOLag, GRPORePO, PPOLag, RePO, TextAlignedPPOLag, make_trainer
from tests.helpers import SMALL_MODEL_AND_WORLD, run_ppo_two_processes, upstream_artifacts
from tests.test_ppo_hooks import _bare, _rollout

SMALL = SMALL_MODEL_AND_WORLD + ["sft.max_steps=4", "reward.max_steps=2", "cost.max_steps=2", "ppo.iterations=2"]
GRPO = ["ppo.algorithm=grpo_lag", "ppo.samples_per_prompt=2"]


# --------------------------------------------------------------------------- the math


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 3.0, 5.0, 5.0, 0.0, 6.0])
    adv = group_advantages(scores, 2, eps=0.0 + 1e-12)
    # group (1, 3): mean 2, sample std sqrt(2); (5, 5): a constant group carries no signal
    s = 2**0.5
    torch.testing.assert_close(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0, -3 / (18**0.5), 3 / (18**0.5)]))
    torch.testing.assert_close(group_advantages(torch.full((4,), 7.0), 4), torch.zeros(4))
    with pytest.raises(ValueError, match="whole number of groups"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=">= 2 answers"):
        group_advantages(torch.zeros(4), 1)


def test_budget_advantages_by_hand():
    """Two prompts of two answers: the first group is all unsafe (C = 3 > budget -4), the second safe."""
    rewards, costs = torch.tensor([1.0, 3.0, 2.0, 2.0]), torch.tensor([3.0, 3.0, -5.0, -5.0])
    # centred R: (-1, 1, 0, 0); C - d: (7, 7, -1, -1); lam = 1: S = (-8, -6, 1, 1) / 2 = (-4, -3, 0.5, 0.5);
    # sample std of S: sqrt(16.5 / 3) = sqrt(5.5)
    adv = budget_advantages(rewards, costs, group=2, lam=1.0, budget=-4.0)
    torch.testing.assert_close(adv, torch.tensor([-4.0, -3.0, 0.5, 0.5]) / 5.5**0.5)
    # centring the cost in its group would give the all-unsafe group no cost signal at all
    torch.testing.assert_close(group_advantages(costs, 2)[:2], torch.zeros(2))
    # lam = 0: the group-centred reward, one scale over the batch (sample std of (-1, 1, 0, 0): sqrt(2 / 3))
    adv = budget_advantages(rewards, costs, group=2, lam=0.0, budget=-4.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (2 / 3) ** 0.5)
    with pytest.raises(ValueError, match="whole number of groups"):
        budget_advantages(rewards[:3], costs[:3], group=2, lam=1.0, budget=0.0)


def test_rectified_costs_are_zero_within_budget():
    c = torch.tensor([-5.0, -0.1, 0.0, 0.5, 3.0])
    torch.testing.assert_close(rectified_costs(c), torch.tensor([0.0, 0.0, 0.0, 0.5, 3.0]))
    torch.testing.assert_close(rectified_costs(c, threshold=-1.0), torch.tensor([0.0, 0.9, 1.0, 1.5, 4.0]))


def test_prompt_rectified_costs_by_hand():
    """Two prompts of two answers: means 1 (over the budget 0) and -3 (within it)."""
    c = torch.tensor([3.0, -1.0, -2.0, -4.0])
    answers, violations = prompt_rectified_costs(c, 2)
    torch.testing.assert_close(answers, torch.tensor([3.0, -1.0, 0.0, 0.0]))  # C - d on the violating prompt only
    torch.testing.assert_close(violations, torch.tensor([1.0, 0.0]))
    answers, violations = prompt_rectified_costs(c, 2, threshold=-2.0)  # means 1 and -3 against d = -2
    torch.testing.assert_close(answers, torch.tensor([5.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(violations, torch.tensor([3.0, 0.0]))
    # a prompt within budget on average carries nothing although one of its answers costs > 0
    answers, violations = prompt_rectified_costs(torch.tensor([0.5, -1.5]), 2)
    torch.testing.assert_close(answers, torch.zeros(2))
    torch.testing.assert_close(violations, torch.zeros(1))
    with pytest.raises(ValueError, match="whole number of groups"):
        prompt_rectified_costs(torch.zeros(3), 2)


def test_reference_kl_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    kl = reference_kl(logp, ref, mask)
    # k3 = e^d - d - 1 with d = ref - logp: token 1 d = 0 -> 0; token 2 d = 1 -> e - 2; token 3 is padding
    assert kl.item() == pytest.approx((torch.e - 2) / 2)
    kl.backward()  # d k3 / d logp = 1 - e^d: 0 and 1 - e, over 2 tokens; nothing on padding
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, (1 - torch.e) / 2, 0.0]]))


# --------------------------------------------------------------------------- the hooks


def test_repo_hooks_penalise_violations_only():
    settings = ["ppo.lambda_init=1", "ppo.lambda_lr=0.5", "ppo.lambda_update_delay_steps=0", "ppo.lambda_max=5"]
    trainer = _bare(RePO, settings)
    ro = _rollout()  # C = (3, -1): the first answer violates C <= 0 by 3, the second is within budget
    torch.testing.assert_close(trainer.shape_costs(ro), torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    stats = trainer.multiplier_step(ro)
    assert stats["Jc"] == pytest.approx(1.5)  # mean violation (3 + 0) / 2
    assert trainer.lagrange.lambda_ == pytest.approx(torch.e**0.75)  # log 1 + 0.5 * 1 * 1.5
    safe = _rollout()
    safe.end_cost = torch.tensor([-2.0, -1.0])
    before = trainer.lagrange.lambda_
    assert trainer.multiplier_step(safe)["Jc"] == pytest.approx(1.5 / 2)  # window of 4: (3 + 0 + 0 + 0) / 4
    assert trainer.lagrange.lambda_ >= before  # the mean violation is >= 0: lambda never falls
    budget = _bare(RePO, ["ppo.repo_threshold=-2"])
    torch.testing.assert_close(budget.violations(ro), torch.tensor([5.0, 1.0]))


def test_repo_prompt_scope_hooks_by_hand():
    settings = ["ppo.lambda_init=1", "ppo.lambda_lr=0.5", "ppo.lambda_update_delay_steps=0", "ppo.lambda_max=5"]
    trainer = _bare(RePO, settings + ["ppo.repo_scope=prompt", "ppo.samples_per_prompt=2"])
    ro = _rollout()  # one prompt, C = (3, -1): mean 1 > 0, so both answers carry C - 0
    torch.testing.assert_close(trainer.shape_costs(ro), torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]))
    stats = trainer.multiplier_step(ro)
    assert stats["Jc"] == pytest.approx(1.0)  # one prompt, violation max(0, 1 - 0)
    assert trainer.lagrange.lambda_ == pytest.approx(torch.e**0.5)  # log 1 + 0.5 * 1 * 1
    ro.end_cost = torch.tensor([0.5, -1.5])  # one answer over 0, the prompt within budget on average
    torch.testing.assert_close(trainer.shape_costs(ro), torch.zeros(2, 4))
    # the trainer checks the scope before it builds its roles
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        RePO.check_scope(load_config("tiny", overrides=["ppo.repo_scope=prompt"]))
    with pytest.raises(ConfigError, match="repo_scope"):
        RePO(load_config("tiny", overrides=["ppo.repo_scope=episode"]), sft_dir=None, reward_dir=None, cost_dir=None,
             out_dir=None)  # fmt: skip


def test_repo_tolerance_lets_lambda_fall():
    settings = ["ppo.lambda_init=1", "ppo.lambda_lr=0.5", "ppo.lambda_update_delay_steps=0", "ppo.lambda_max=5"]
    trainer = _bare(RePO, settings + ["ppo.repo_tolerance=1"])
    ro = _rollout()  # violations (3, 0): mean 1.5, over the tolerance 1 by 0.5
    trainer.multiplier_step(ro)
    assert trainer.lagrange.lambda_ == pytest.approx(torch.e**0.25)  # log 1 + 0.5 * 1 * (1.5 - 1)
    safe = _rollout()
    safe.end_cost = torch.tensor([-2.0, -1.0])
    trainer.multiplier_step(safe)  # window mean (3 + 0 + 0 + 0) / 4 = 0.75 < 1: lambda falls
    lam = torch.e**0.25
    assert trainer.lagrange.lambda_ == pytest.approx(lam * torch.e ** (0.5 * lam * (0.75 - 1)))


def test_grpo_hooks_by_hand():
    trainer = _bare(GRPOLag, GRPO + ["ppo.kl_coeff=0.1", "ppo.lambda_init=1"])
    ro = _rollout()  # one group of 2: R = (1, 2), C = (3, -1)
    rewards, costs = trainer.shape_rewards(ro), trainer.shape_costs(ro)
    # no KL in the per-token reward: the end score alone
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]))
    trainer.compute_advantages(ro, rewards, costs)
    a = 2**-0.5  # (x - mean) / sample std for two values: -+ 1 / sqrt(2)
    torch.testing.assert_close(ro.reward_adv, torch.tensor([[-a, -a, 0, 0], [a, a, a, 0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.cost_adv, torch.tensor([[a, a, 0, 0], [-a, -a, -a, 0]]), atol=1e-5, rtol=0)
    assert ro.reward_ret is None and ro.cost_ret is None
    adv = trainer.combine_advantages(ro, 1.0)  # (A_r - A_c) / 2
    torch.testing.assert_close(adv, torch.tensor([[-a, -a, 0, 0], [a, a, a, 0]]), atol=1e-5, rtol=0)
    ro.advantages = adv
    mb = ro.select(torch.arange(2))
    assert "reward_ret" not in mb and "ref_logp" in mb
    logp = ro.old_logp.clone().requires_grad_(True)
    loss, stats = trainer.actor_objective(mb, logp)
    surrogate, _ = clipped_surrogate(logp, ro.old_logp, adv, ro.mask, 0.2)
    expected = surrogate + 0.1 * reference_kl(logp, ro.ref_logp, ro.mask)
    torch.testing.assert_close(loss, expected)
    assert stats["reference_kl"] > 0


def test_grpo_scores_mode_normalises_the_lagrangian_score_once():
    trainer = _bare(GRPOLag, GRPO + ["ppo.group_combine=scores", "ppo.group_scale=none"])
    ro = _rollout()  # one group of 2: R = (1, 2), C = (3, -1)
    trainer.compute_advantages(ro, trainer.shape_rewards(ro), trainer.shape_costs(ro))
    torch.testing.assert_close(ro.reward_total, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(ro.cost_total, torch.tensor([3.0, -1.0]))
    # lambda = 2: S = (R - 2 C) / 3 = (-5 / 3, 4 / 3); centred: (-1.5, 1.5) on each real token
    adv = trainer.combine_advantages(ro, 2.0)
    torch.testing.assert_close(adv, torch.tensor([[-1.5, -1.5, 0, 0], [1.5, 1.5, 1.5, 0]]), atol=1e-5, rtol=0)
    # group scale: unit spread whatever lambda, so a prompt's weight does not grow with its cost spread
    grouped = _bare(GRPOLag, GRPO + ["ppo.group_combine=scores"])
    grouped.compute_advantages(ro, grouped.shape_rewards(ro), grouped.shape_costs(ro))
    a = 2**-0.5
    for lam in (0.0, 2.0, 10.0):
        adv = grouped.combine_advantages(ro, lam)
        torch.testing.assert_close(adv, torch.tensor([[-a, -a, 0, 0], [a, a, a, 0]]), atol=1e-5, rtol=0)
    ro.end_reward, ro.end_cost = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 3.0])  # helpful = harmful
    grouped.compute_advantages(ro, grouped.shape_rewards(ro), grouped.shape_costs(ro))
    assert grouped.combine_advantages(ro, 0.0)[1, 0] > 0 > grouped.combine_advantages(ro, 5.0)[1, 0]
    # a benign group: the second answer is more helpful, CM-V barely tells the two apart (both safe).
    # Separate normalisation blows the 0.1 cost spread up to the reward's scale and, at lambda = 5,
    # prefers the less helpful answer; one normalisation of R - lambda C keeps the reward's ranking.
    ro.end_reward, ro.end_cost = torch.tensor([1.0, 3.0]), torch.tensor([-5.0, -4.9])
    separate = _bare(GRPOLag, GRPO)
    for t in (separate, grouped):
        t.compute_advantages(ro, t.shape_rewards(ro), t.shape_costs(ro))
    assert separate.combine_advantages(ro, 5.0)[1, 0] < 0 < grouped.combine_advantages(ro, 5.0)[1, 0]
    with pytest.raises(ConfigError, match="'advantages', 'scores' or 'budget'"):
        GRPOLag(load_config("tiny", overrides=GRPO + ["ppo.group_combine=sum"]), sft_dir=None, reward_dir=None,
                cost_dir=None, out_dir=".")  # fmt: skip


def test_grpo_budget_mode_measures_the_cost_against_the_budget():
    ro = _rollout()  # one group of 2: R = (1, 2), C = (3, -1); both cost more than the budget d = -4.6
    trainer = _bare(GRPOLag, GRPO + ["ppo.group_combine=budget", "ppo.threshold=-4.6"])
    trainer.compute_advantages(ro, trainer.shape_rewards(ro), trainer.shape_costs(ro))
    # lam = 2: S = ((-0.5, 0.5) - 2 (7.6, 3.6)) / 3 = (-15.7, -6.7) / 3; sample std of two: |S_1 - S_2| / sqrt(2)
    s = torch.tensor([-15.7, -6.7]) / 3
    expected = s / (3.0 / 2**0.5)
    adv = trainer.combine_advantages(ro, 2.0)
    torch.testing.assert_close(adv, torch.tensor([[expected[0]] * 2 + [0, 0], [expected[1]] * 3 + [0]]))
    assert torch.all(adv.sum(dim=1) < 0)  # both pushed down: the group's mean is no excuse
    # RePO's constraint: violations (3, 0) against the tolerance 0; the answer within budget keeps its reward
    rectified = _bare(GRPORePO, GRPO + ["ppo.group_combine=budget"])
    rectified.compute_advantages(ro, rectified.shape_rewards(ro), rectified.shape_costs(ro))
    s = torch.tensor([-6.5, 0.5]) / 3  # ((-0.5, 0.5) - 2 (3, 0)) / 3
    adv = rectified.combine_advantages(ro, 2.0)
    torch.testing.assert_close(adv[:, 0], s / (7.0 / 3 / 2**0.5))
    assert adv[0, 0] < 0 < adv[1, 0]


def test_rectified_grpo_gives_a_safe_group_no_cost_advantage():
    trainer = _bare(GRPORePO, GRPO)
    ro = _rollout()
    ro.end_cost = torch.tensor([-3.0, -0.5])  # both answers within C <= 0: no violation in the group
    trainer.compute_advantages(ro, trainer.shape_rewards(ro), trainer.shape_costs(ro))
    assert torch.all(ro.cost_adv == 0) and ro.reward_adv.abs().sum() > 0
    ro.end_cost = torch.tensor([2.0, -0.5])  # the first violates by 2: it alone carries cost
    torch.testing.assert_close(trainer.shape_costs(ro), torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert trainer.multiplier_step(ro)["Jc"] == pytest.approx(1.0)  # mean violation (2 + 0) / 2
    assert GRPORePO.budget_key == RePO.budget_key == "repo_threshold"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    art = tmp_path_factory.mktemp("artifacts")
    with upstream_artifacts(art, SMALL) as dirs:
        yield art, dirs


def test_grpo_needs_groups(upstream, tmp_path):
    _, dirs = upstream
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        make_trainer(load_config("tiny", overrides=SMALL + ["ppo.algorithm=grpo_lag"]), out_dir=tmp_path, **dirs)
    bad = SMALL + GRPO + ["ppo.samples_per_prompt=3"]  # rollout batch 4 is not a multiple of 3
    with pytest.raises(ConfigError, match="multiple of"):
        make_trainer(load_config("tiny", overrides=bad), out_dir=tmp_path, **dirs)


def test_grpo_trains_four_roles(upstream, tmp_path):
    _, dirs = upstream
    trainer = make_trainer(load_config("tiny", overrides=SMALL + GRPO), out_dir=tmp_path, **dirs)
    roles = trainer.roles
    assert roles.reward_critic is None and roles.cost_critic is None and len(roles.models()) == 4
    assert set(roles.params) == {"actor"}
    before = [p.detach().clone() for p in roles.params["actor"]]
    done = trainer.train()
    assert done["iterations"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, roles.params["actor"]))
    record = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert "reference_kl" in record and "reward_critic_loss" not in record


def test_repo_trains(upstream, tmp_path):
    _, dirs = upstream
    trainer = make_trainer(load_config("tiny", overrides=SMALL + ["ppo.algorithm=repo"]), out_dir=tmp_path, **dirs)
    trainer.train()
    lambdas = [r["lambda"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(b >= a for a, b in zip(lambdas, lambdas[1:]))  # the multiplier of a zero-violation target


def test_text_aligned_ppo_lag_trains_on_caption_carried_prompts(upstream, tmp_path):
    """``ppo_lag_text``: every train prompt as caption + question with the neutral picture, context unchanged."""
    _, dirs = upstream
    cfg = load_config("tiny", overrides=SMALL + ["ppo.algorithm=ppo_lag_text"])
    trainer = make_trainer(cfg, out_dir=tmp_path, **dirs)
    assert isinstance(trainer, TextAlignedPPOLag) and isinstance(trainer, PPOLag)
    original = rl_prompts(cfg.data, "train")
    assert len(trainer.prompts) == len(original) and trainer.prompts.features == original.features
    assert list(trainer.prompts["question"]) == [
        caption_question(c, q) for c, q in zip(original["context"], original["question"])
    ]
    assert trainer.prompts[0]["question"].startswith("the picture shows ")
    assert list(trainer.prompts["context"]) == list(original["context"])  # the oracle's ground truth
    blank = np.asarray(neutral_picture(cfg.data.image_size))
    rows = trainer._prompt_rows(0)
    assert all(np.array_equal(np.asarray(img.convert("RGB")), blank) for img in rows["image"])
    assert set(rows["question"]) <= set(trainer.prompts["question"])
    assert trainer.train(stop_after=1)["iterations"] >= 1


@pytest.mark.parametrize("method", [GRPO, ["ppo.algorithm=repo"]], ids=["grpo_lag", "repo"])
def test_two_processes_agree(upstream, tmp_path, method):
    """torchrun with 2 CPU processes: the same lambda and actor weights on both ranks."""
    art, _ = upstream
    result = run_ppo_two_processes(art, tmp_path / "ppo", SMALL + method + ["ppo.rollout_batch_size=8"])
    assert result["processes"] == 2 and result["ranks_agree"] is True and result["iterations"] == 2
