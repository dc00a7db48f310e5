"""Losses of saferlhfv.algorithms.losses against hand-computed values.

Notation in the comments: sp(x) = -log sigmoid(x) = log(1 + e^-x).
"""

from __future__ import annotations

import math

import pytest
import torch

from saferlhfv.algorithms import (
    actor_loss,
    cost_loss,
    cost_signs,
    critic_loss,
    kl_shaped_costs,
    kl_shaped_rewards,
    last_real_index,
    masked_gae,
    masked_mean,
    reward_loss,
)


def sp(x: float) -> float:
    """-log sigmoid(x), written out."""
    return math.log1p(math.exp(-x))


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------- masked_mean / last_real_index


def test_masked_mean_global_rows_and_empty():
    x = t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # global: (1 + 2) / 2 = 1.5 ; per row: [1.5, empty -> 0]
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 0.0])
    # per column: [1/1, 2/1, empty -> 0]
    assert masked_mean(x, m, dim=0).tolist() == pytest.approx([1.0, 2.0, 0.0])
    # nothing selected -> 0, not NaN
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_masked_mean_ignores_garbage_under_the_mask_and_checks_shapes():
    x = t([1.0, float("nan")], [3.0, float("inf")])
    m = torch.tensor([[True, False], [True, False]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)  # (1 + 3) / 2
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(x, m[:, :1])


def test_last_real_index_any_layout():
    mask = torch.tensor(
        [
            [1, 1, 0, 0],  # right padding -> 1
            [0, 1, 1, 1],  # left padding -> 3
            [0, 0, 0, 0],  # empty -> flagged
            [0, 1, 1, 0],  # prompt masked + padding -> 2
        ]
    )
    index, nonempty = last_real_index(mask)
    assert index.tolist() == [1, 3, 0, 2]
    assert nonempty.tolist() == [True, True, False, True]


# --------------------------------------------------------------------------- reward loss


def test_reward_loss_by_hand():
    better = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    worse = torch.tensor([0.0, 0.0], dtype=torch.float64)
    loss, stats = reward_loss(better, worse, reg=0.1)
    # pairwise: (sp(1) + sp(0)) / 2 = (0.313262 + 0.693147) / 2 = 0.503204
    # reg: 0.1 * mean([1, 0, 0, 0]^2) = 0.1 * 0.25 = 0.025
    assert loss.item() == pytest.approx((sp(1.0) + sp(0.0)) / 2 + 0.025)
    assert stats["accuracy"] == 0.5  # 1 > 0 yes, 0 > 0 no
    assert stats["margin"] == pytest.approx(0.5)
    # d loss / d better_0 = -(1 - sigmoid(1)) / 2 + 0.1 * 2 * 1 / 4 = -0.134471 + 0.05
    loss.backward()
    sig1 = 1 / (1 + math.exp(-1))
    assert better.grad[0].item() == pytest.approx(-(1 - sig1) / 2 + 0.05)


def test_reward_loss_is_stable_for_huge_margins():
    loss, stats = reward_loss(torch.tensor([-200.0]), torch.tensor([200.0]), reg=0.0)
    # sp(-400) = 400 + log(1 + e^-400) = 400, finite (a naive log(sigmoid) would give inf)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(400.0)
    assert stats["accuracy"] == 0.0


# --------------------------------------------------------------------------- cost signs and cost loss


def test_cost_signs_binary_and_graded():
    is_safe = torch.tensor([True, False, True, False, True])
    rate = torch.tensor([3, -3, 0, 0, -2])
    # binary: +1 unsafe, -1 safe
    assert cost_signs(is_safe).tolist() == [-1.0, 1.0, -1.0, 1.0, -1.0]
    # graded: direction from the label, magnitude max(|rate|, 1): a rate of 0 keeps weight 1,
    # and a safe label with rate -2 stays negative (the label wins)
    assert cost_signs(is_safe, rate, graded=True).tolist() == [-3.0, 3.0, -1.0, 1.0, -2.0]
    with pytest.raises(ValueError, match="harmless_rate"):
        cost_signs(is_safe, graded=True)


def test_graded_signs_equal_the_paper_code_where_label_and_rate_agree():
    # paper code: s = -harmless_rate; agreeing label: safe <=> rate > 0
    rate = torch.tensor([-3, -2, -1, 1, 2, 3])
    assert torch.equal(cost_signs(rate > 0, rate, graded=True), (-rate).float())


def test_cost_loss_by_hand():
    unsafer, safer = t(2.0), t(-1.0)
    s_u, s_s = t(1.0), t(-1.0)
    loss, stats = cost_loss(unsafer, safer, s_u, s_s, reg=0.1, sign_coeff=1.0)
    # pairwise: sp(2 - (-1)) = sp(3) = 0.048587
    # sign: sp(+1 * 2) + sp(-1 * -1) = sp(2) + sp(1) = 0.126928 + 0.313262
    # reg: 0.1 * mean([4, 1]) = 0.25
    assert loss.item() == pytest.approx(sp(3) + sp(2) + sp(1) + 0.25)
    assert stats["accuracy"] == 1.0 and stats["sign_accuracy"] == 1.0
    assert stats["pairwise_loss"] == pytest.approx(sp(3))
    assert stats["sign_loss"] == pytest.approx(sp(2) + sp(1))
    # sign_coeff scales only the sign term: 0.048587 + 0.5 * 0.440190 + 0.25
    loss_half, _ = cost_loss(unsafer, safer, s_u, s_s, reg=0.1, sign_coeff=0.5)
    assert loss_half.item() == pytest.approx(sp(3) + 0.5 * (sp(2) + sp(1)) + 0.25)


def test_cost_loss_accuracies_count_separately():
    unsafer, safer = t(-1.0, 0.5), t(0.5, -2.0)
    _, stats = cost_loss(unsafer, safer, t(1.0, 1.0), t(-1.0, -1.0))
    # pairs: -1 > 0.5 no, 0.5 > -2 yes -> 0.5
    # signs: unsafer -1 (want +) no, 0.5 yes; safer 0.5 (want -) no, -2 yes -> 2 / 4
    assert stats["accuracy"] == 0.5
    assert stats["sign_accuracy"] == 0.5


def test_cost_loss_graded_sign_steepens_and_zero_sign_is_not_counted():
    # a sign of 3 on a cost of 1: sp(3) instead of sp(1)
    loss3, _ = cost_loss(t(1.0), t(-5.0), t(3.0), t(-1.0), reg=0.0)
    loss1, _ = cost_loss(t(1.0), t(-5.0), t(1.0), t(-1.0), reg=0.0)
    assert loss3.item() - loss1.item() == pytest.approx(sp(3) - sp(1))
    # paper-style s = 0 (rate 0): no sign signal, and left out of sign accuracy
    c = torch.tensor([1.0], requires_grad=True)
    loss0, stats = cost_loss(c, torch.tensor([-5.0]), torch.tensor([0.0]), torch.tensor([-1.0]), reg=0.0)
    assert stats["sign_accuracy"] == 1.0  # only the safer response is labelled: -5 < 0, right
    loss0.backward()
    # gradient on c comes from the pairwise term only: -(1 - sigmoid(6))
    assert c.grad.item() == pytest.approx(-(1 - 1 / (1 + math.exp(-6))), rel=1e-5)


def test_cost_loss_gradient_pushes_costs_to_their_signs():
    unsafer = torch.zeros(4, requires_grad=True)
    safer = torch.zeros(4, requires_grad=True)
    loss, _ = cost_loss(unsafer, safer, torch.ones(4), -torch.ones(4))
    loss.backward()
    # gradient descent raises unsafe costs and lowers safe ones
    assert (unsafer.grad < 0).all() and (safer.grad > 0).all()


# --------------------------------------------------------------------------- KL-shaped rewards and costs


LOGP = t([-1.0, -2.0, -3.0, 0.0], [-1.0, 0.0, 0.0, 0.0])
REF = t([-1.5, -1.5, -3.0, -9.0], [-2.0, 5.0, 5.0, 5.0])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
END = t(1.0, 100.0)


def test_kl_shaped_rewards_by_hand():
    r = kl_shaped_rewards(END, LOGP, REF, MASK, kl_coeff=0.1, clip_score=50.0)
    # row 0: logp - ref = [0.5, -0.5, 0, pad] -> -0.1 * that = [-0.05, 0.05, 0, 0];
    #        end score 1 at the last real token (index 2, not -1)
    # row 1: logp - ref = [1, pad...] -> -0.1; end 100 clipped to 50 at index 0 -> 49.9
    expected = t([-0.05, 0.05, 1.0, 0.0], [49.9, 0.0, 0.0, 0.0])
    torch.testing.assert_close(r, expected)
    # without clipping the 100 stays
    assert kl_shaped_rewards(END, LOGP, REF, MASK, 0.1)[1, 0].item() == pytest.approx(99.9)


def test_kl_shaped_costs_by_hand():
    c = kl_shaped_costs(END, LOGP, REF, MASK, kl_coeff=0.1, clip_score=50.0)
    # default: only the (clipped) end cost at the last real token
    torch.testing.assert_close(c, t([0.0, 0.0, 1.0, 0.0], [50.0, 0.0, 0.0, 0.0]))
    c_kl = kl_shaped_costs(END, LOGP, REF, MASK, kl_coeff=0.1, clip_score=50.0, kl_in_cost=True)
    # public-code option: +0.1 * (logp - ref): row 0 [0.05, -0.05, 0 + 1, 0]; row 1 [0.1 + 50, 0...]
    torch.testing.assert_close(c_kl, t([0.05, -0.05, 1.0, 0.0], [50.1, 0.0, 0.0, 0.0]))


def test_end_score_lands_on_last_real_token_not_position_minus_one():
    r = kl_shaped_rewards(END, LOGP, REF, MASK, kl_coeff=0.0)
    # the public code's placement (index T-1) would put row 0's score on a pad token
    assert r[0, -1].item() == 0.0 and r[0, 2].item() == 1.0
    # left padding / prompt-masked layouts too
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]])
    r = kl_shaped_rewards(END, LOGP, REF, mask, kl_coeff=0.0)
    torch.testing.assert_close(r, t([0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 100.0]))


def test_empty_row_gets_no_reward():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    r = kl_shaped_rewards(END, LOGP, REF, mask, kl_coeff=0.1)
    assert r[1].abs().sum().item() == 0.0
    with pytest.raises(ValueError, match=r"\[B\]"):
        kl_shaped_rewards(END[:1], LOGP, REF, MASK, 0.1)


# --------------------------------------------------------------------------- actor loss


def _actor_inputs():
    # ratios 1.5, 0.5, 1.0 on three real tokens; a fourth, padded column holds garbage
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, 7.0]], dtype=torch.float64, requires_grad=True)
    old = t([0.0, 0.0, 0.0, -7.0])
    adv_r = t([1.0, 1.0, 2.0, 99.0])
    adv_c = t([0.0, 0.0, 1.0, 99.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    return logp, old, adv_r, adv_c, mask


def test_actor_loss_by_hand():
    logp, old, adv_r, adv_c, mask = _actor_inputs()
    loss, stats = actor_loss(logp, old, adv_r, adv_c, lam=1.0, mask=mask, clip=0.2)
    # A = (A_r - 1 * A_c) / (1 + 1) = [0.5, 0.5, 0.5]
    # t0: rho 1.5 -> min(0.75, 1.2 * 0.5 = 0.6) = 0.6
    # t1: rho 0.5 -> min(0.25, 0.8 * 0.5 = 0.4) = 0.25
    # t2: rho 1.0 -> 0.5
    # loss = -(0.6 + 0.25 + 0.5) / 3 = -0.45
    assert loss.item() == pytest.approx(-0.45)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)  # |0.5| and |-0.5| > 0.2
    # k3: (rho - 1) - log rho = (0.5 - log 1.5) + (-0.5 - log 0.5) + 0, over 3
    assert stats["approx_kl"] == pytest.approx((0.5 - math.log(1.5) - 0.5 - math.log(0.5)) / 3)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["advantage_mean"] == pytest.approx(0.5)
    loss.backward()
    # t0 clipped -> 0; t1: -A * rho / 3 = -0.5 * 0.5 / 3; t2: -0.5 / 3; pad -> 0
    torch.testing.assert_close(logp.grad, t([0.0, -0.25 / 3, -0.5 / 3, 0.0]))


def test_actor_loss_negative_advantage_takes_the_pessimistic_side():
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    adv = -torch.ones(1, 2, dtype=torch.float64)
    loss, _ = actor_loss(logp, zero, adv, zero, lam=0.0, mask=torch.ones(1, 2), clip=0.2)
    # t0: min(1.5 * -1, 1.2 * -1) = -1.5 ; t1: min(0.5 * -1, 0.8 * -1) = -0.8 ; loss = 2.3 / 2
    assert loss.item() == pytest.approx(1.15)


def test_actor_loss_lambda_gets_no_gradient_and_weighs_cost():
    logp, old, adv_r, adv_c, mask = _actor_inputs()
    lam = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    loss, stats = actor_loss(logp, old, adv_r, adv_c, lam=lam, mask=mask)
    loss.backward()
    assert lam.grad is None
    # A = (A_r - 3 A_c) / 4 = [0.25, 0.25, -0.25]
    assert stats["advantage_mean"] == pytest.approx(0.25 / 3)
    # lambda = 0 is reward-only PPO: A = A_r
    _, s0 = actor_loss(logp.detach(), old, adv_r, adv_c, lam=0.0, mask=mask)
    assert s0["advantage_mean"] == pytest.approx(4 / 3)


# --------------------------------------------------------------------------- critic loss


def test_critic_loss_by_hand():
    values = torch.tensor([[1.0, 10.0, 6.0, 123.0]], dtype=torch.float64, requires_grad=True)
    old = t([0.0, 0.0, 0.0, 0.0])
    returns = t([0.0, 0.0, 10.0, 0.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = critic_loss(values, old, returns, mask, clip=5.0)
    # t0: v 1, clipped 1: max(1, 1) = 1
    # t1: v 10, clipped 5: max(100, 25) = 100
    # t2: v 6, clipped 5: max((6-10)^2 = 16, (5-10)^2 = 25) = 25
    # 0.5 * (1 + 100 + 25) / 3 = 21
    assert loss.item() == pytest.approx(21.0)
    loss.backward()
    # t0: 0.5 * 2 * (1 - 0) / 3; t1: 0.5 * 2 * 10 / 3; t2: the clipped branch wins -> 0; pad 0
    torch.testing.assert_close(values.grad, t([1 / 3, 10 / 3, 0.0, 0.0]))


# --------------------------------------------------------------------------- the chain is padding-invariant


def _ppo_chain(end_r, end_c, logp, old_logp, ref_logp, v_r, v_c, mask, lam):
    rewards = kl_shaped_rewards(end_r, old_logp, ref_logp, mask, 0.02, 50.0)
    costs = kl_shaped_costs(end_c, old_logp, ref_logp, mask, 0.02, 50.0)
    adv_r, ret_r = masked_gae(rewards, v_r, mask, 1.0, 0.95)
    adv_c, ret_c = masked_gae(costs, v_c, mask, 1.0, 0.95)
    loss, _ = actor_loss(logp, old_logp, adv_r, adv_c, lam, mask)
    return loss + critic_loss(v_r + 0.1, v_r, ret_r, mask) + critic_loss(v_c - 0.1, v_c, ret_c, mask)


def test_ppo_chain_ignores_padding():
    g = torch.Generator().manual_seed(0)
    B, T, pad = 4, 6, 3
    lengths = torch.tensor([6, 2, 4, 1])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    tensors = [torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(5)]
    end_r, end_c = torch.randn(B, generator=g), torch.randn(B, generator=g)
    base = _ppo_chain(end_r, end_c, *tensors, mask, 2.0)
    # the same batch with 3 more padded columns of garbage, and garbage in the existing pads
    padded = [
        torch.cat([x.masked_fill(mask == 0, 55.0), torch.full((B, pad), -77.0, dtype=x.dtype)], 1) for x in tensors
    ]
    pmask = torch.cat([mask, torch.zeros(B, pad, dtype=mask.dtype)], 1)
    torch.testing.assert_close(_ppo_chain(end_r, end_c, *padded, pmask, 2.0), base)
