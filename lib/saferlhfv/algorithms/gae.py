"""Generalised advantage estimation (GAE) over masked, padded token sequences.

One response is one episode; its tokens are the time steps. The recursion
(Schulman et al. 2016), run backwards over time and vectorised over the batch::

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                      (the critic's regression target)

with ``V_{t+1} = 0`` and ``A_{t+1} = 0`` after the last real token: the episode
ends there, so whatever the critic says about padding never leaks in.

Why the mask matters: the public Safe RLHF-V code runs this with an all-ones
mask, so for every response shorter than the longest in its batch the critic's
values on pad tokens enter ``delta`` at the last real token (``V_{t+1}`` is a
pad's value instead of 0) and the padded steps get advantages of their own
(see ``tests/test_algorithms_gae.py``, which shows the difference).
"""

from __future__ import annotations

import torch

__all__ = ["masked_gae"]


@torch.no_grad()
def masked_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked GAE advantages and returns.

    Supported mask layouts (1 = real response token), all ``[B, T]``:

    * right padding, response from column 0: ``1 1 1 0 0``;
    * the whole sequence with the prompt masked out: ``0 0 1 1 1 0``;
    * left padding: ``0 0 1 1 1``.

    In general the real tokens of a row must be **one contiguous run**; if a row
    has several runs, each is treated as a separate episode ending at its last
    token (a 0 always terminates). A row with no real token gets zeros.

    Args:
        rewards: ``[B, T]`` per-token rewards (or costs), e.g. from
            :func:`~saferlhfv.algorithms.losses.kl_shaped_rewards`.
        values: ``[B, T]`` critic values ``V_t`` at rollout.
        mask: ``[B, T]`` bool or 0/1.
        gamma: discount (``PPOConfig.gamma``; 1.0 in the paper).
        lam: GAE lambda (``PPOConfig.gae_lambda``; 0.95 in the paper).

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 at every position with
        ``mask == 0``; no gradient (they are targets). Computed in at least
        float32 (half-precision inputs are upcast).
    """
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} "
            "must all be the same [B, T]"
        )
    dtype = torch.promote_types(values.dtype, torch.float32)
    keep = mask.bool()
    zero = torch.zeros((), dtype=dtype, device=values.device)
    r = torch.where(keep, rewards.to(dtype), zero)
    v = torch.where(keep, values.to(dtype), zero)  # V = 0 on padding, so V_{t+1} = 0 after the last real token
    m = keep.to(dtype)

    B, T = r.shape
    columns = []
    next_adv = torch.zeros(B, dtype=dtype, device=values.device)
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(next_adv)
        delta = r[:, t] + gamma * next_value - v[:, t]  # delta_t = r_t + gamma V_{t+1} - V_t
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]  # A_t = delta_t + gamma lam A_{t+1}; 0 on pads
        columns.append(next_adv)
    advantages = torch.stack(columns[::-1], dim=1)
    returns = (advantages + v) * m  # R_t = A_t + V_t
    return advantages, returns
