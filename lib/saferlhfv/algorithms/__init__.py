"""saferlhfv.algorithms: the math of Safe RLHF-V on plain tensors.

* :mod:`~saferlhfv.algorithms.losses`: RM-V / CM-V losses, KL-shaped per-token
  rewards and costs, the PPO-Lagrangian actor loss and the clipped critic loss.
* :mod:`~saferlhfv.algorithms.gae`: masked GAE for padded responses.
* :mod:`~saferlhfv.algorithms.lagrange`: the multiplier lambda (log space,
  budget, delay, sliding cost window, pooled across processes).
* :mod:`~saferlhfv.algorithms.streaming`: the (tau, k) stopping rule of a streaming
  content monitor, its choice on validation data and its metrics.
"""

from saferlhfv.algorithms.gae import masked_gae
from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import (
    actor_loss,
    clipped_surrogate,
    combine_advantages,
    cost_loss,
    cost_signs,
    critic_loss,
    group_advantages,
    kl_shaped_costs,
    kl_shaped_rewards,
    last_real_index,
    masked_mean,
    rectified_costs,
    reference_kl,
    reward_loss,
    whiten,
)
from saferlhfv.algorithms.streaming import choose_rule, macro_f1, rule_metrics, stop_position, tokens_seen

__all__ = [
    "Lagrange",
    "actor_loss",
    "clipped_surrogate",
    "combine_advantages",
    "cost_loss",
    "cost_signs",
    "critic_loss",
    "group_advantages",
    "kl_shaped_costs",
    "kl_shaped_rewards",
    "last_real_index",
    "masked_gae",
    "masked_mean",
    "rectified_costs",
    "reference_kl",
    "reward_loss",
    "whiten",
    "stop_position",
    "tokens_seen",
    "macro_f1",
    "rule_metrics",
    "choose_rule",
]
