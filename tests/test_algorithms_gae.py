"""Masked GAE: hand-computed episodes, a naive per-row reference, the layouts, the all-ones trap."""

from __future__ import annotations

import pytest
import torch

from saferlhfv.algorithms import masked_gae


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def naive_gae(rewards, values, mask, gamma, lam):
    """Reference: per row, slice out the one contiguous real span and run the textbook recursion."""
    adv = torch.zeros_like(values)
    ret = torch.zeros_like(values)
    for b in range(rewards.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        if not idx:
            continue
        start, end = idx[0], idx[-1] + 1
        assert idx == list(range(start, end)), "reference handles one contiguous span"
        r, v = rewards[b, start:end].tolist(), values[b, start:end].tolist()
        a, n = 0.0, len(r)
        for k in reversed(range(n)):
            next_v = v[k + 1] if k + 1 < n else 0.0  # the episode ends at the last real token
            a = r[k] + gamma * next_v - v[k] + gamma * lam * a
            adv[b, start + k] = a
            ret[b, start + k] = a + v[k]
    return adv, ret


def test_three_token_episode_by_hand():
    rewards = t([0.0, 0.0, 1.0])
    values = t([0.5, 0.6, 0.7])
    adv, ret = masked_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # t2: delta = 1 + 0 - 0.7 = 0.3                         A2 = 0.3
    # t1: delta = 0 + 0.7 - 0.6 = 0.1   A1 = 0.1 + 0.5 * 0.3 = 0.25
    # t0: delta = 0 + 0.6 - 0.5 = 0.1   A0 = 0.1 + 0.5 * 0.25 = 0.225
    # returns = A + V = [0.725, 0.85, 1.0]
    torch.testing.assert_close(adv, t([0.225, 0.25, 0.3]))
    torch.testing.assert_close(ret, t([0.725, 0.85, 1.0]))


def test_discount_by_hand():
    adv, ret = masked_gae(t([1.0, 1.0]), t([0.0, 0.0]), torch.ones(1, 2), gamma=0.5, lam=1.0)
    # A1 = 1 ; A0 = 1 + 0.5 * 0 - 0 + 0.5 * 1 * 1 = 1.5
    torch.testing.assert_close(adv, t([1.5, 1.0]))
    torch.testing.assert_close(ret, t([1.5, 1.0]))


@pytest.mark.parametrize(
    "mask",
    [
        [[1, 1, 1, 0, 0]],  # right padding
        [[0, 0, 1, 1, 1]],  # left padding
        [[0, 1, 1, 1, 0]],  # prompt masked, then padding
    ],
    ids=["right", "left", "prompt+pad"],
)
def test_layouts_give_the_hand_computed_episode(mask):
    mask = torch.tensor(mask)
    keep = mask.bool()
    # the same 3-token episode as above, wherever it sits; garbage elsewhere
    rewards = torch.full((1, 5), 9.0, dtype=torch.float64)
    values = torch.full((1, 5), -4.0, dtype=torch.float64)
    rewards[keep] = t(0.0, 0.0, 1.0)
    values[keep] = t(0.5, 0.6, 0.7)
    adv, ret = masked_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv[keep], t(0.225, 0.25, 0.3))
    torch.testing.assert_close(ret[keep], t(0.725, 0.85, 1.0))
    assert adv[~keep].abs().sum() == 0 and ret[~keep].abs().sum() == 0


@pytest.mark.parametrize("layout", ["right", "left", "prompt"])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_matches_naive_reference_on_random_batches(layout, gamma, lam):
    g = torch.Generator().manual_seed(10 * ["right", "left", "prompt"].index(layout) + int(10 * gamma))
    B, T = 16, 12
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # 0 included: an empty row
    lengths[0] = T  # and a full one
    cols = torch.arange(T)[None]
    if layout == "right":
        mask = cols < lengths[:, None]
    elif layout == "left":
        mask = cols >= (T - lengths)[:, None]
    else:
        start = torch.randint(0, 4, (B,), generator=g).clamp(max=T - lengths)
        mask = (cols >= start[:, None]) & (cols < (start + lengths)[:, None])
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    adv, ret = masked_gae(rewards, values, mask.long(), gamma, lam)
    ref_adv, ref_ret = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert adv[lengths == 0].abs().sum() == 0


def test_public_code_all_ones_mask_gives_wrong_advantages():
    # a 2-token response padded to 4; the critic outputs 3.0 on the pad positions
    rewards = t([0.0, 1.0, 0.0, 0.0])
    values = t([0.2, 0.4, 3.0, 3.0])
    right = torch.tensor([[1, 1, 0, 0]])
    adv, _ = masked_gae(rewards, values, right, gamma=1.0, lam=0.95)
    # true: A1 = 1 + 0 - 0.4 = 0.6 ; A0 = (0 + 0.4 - 0.2) + 0.95 * 0.6 = 0.77
    torch.testing.assert_close(adv, t([0.77, 0.6, 0.0, 0.0]))
    wrong, _ = masked_gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=0.95)
    # all-ones: A3 = -3 ; A2 = 0 + 3 - 3 + 0.95 * -3 = -2.85 ;
    #           A1 = 1 + 3 - 0.4 + 0.95 * -2.85 = 0.8925 (the pad's value leaks in) ; pads get advantages
    assert wrong[0, 1].item() == pytest.approx(0.8925)
    assert wrong[0, 2:].abs().sum() > 0
    assert not torch.allclose(wrong[0, :2], adv[0, :2])


def test_half_precision_is_upcast_and_no_grad():
    values = torch.ones(2, 3, dtype=torch.bfloat16, requires_grad=True)
    adv, ret = masked_gae(torch.zeros(2, 3, dtype=torch.bfloat16), values, torch.ones(2, 3))
    assert adv.dtype == torch.float32 and not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="same"):
        masked_gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_a_gap_in_the_mask_ends_the_episode():
    # two runs in one row = two episodes: [0, 1] and [3, 4]
    rewards = t([0.0, 1.0, 5.0, 0.0, 2.0])
    values = t([0.5, 0.5, 9.0, 1.0, 1.0])
    adv, _ = masked_gae(rewards, values, torch.tensor([[1, 1, 0, 1, 1]]), gamma=1.0, lam=1.0)
    # first: A1 = 1 - 0.5 = 0.5 (no V from the gap) ; A0 = 0 + 0.5 - 0.5 + 0.5 = 0.5
    # second: A4 = 2 - 1 = 1 ; A3 = 0 + 1 - 1 + 1 = 1
    torch.testing.assert_close(adv, t([0.5, 0.5, 0.0, 1.0, 1.0]))
