"""Losses of Safe RLHF-V: the reward and cost models (RM-V, CM-V) and PPO-Lagrangian.

Plain functions on tensors, each with its equation beside the code. Shapes use
``B`` for the batch and ``T`` for the token axis. A *mask* is ``[B, T]`` of 0/1
(bool or float): 1 on the real response tokens that the loss covers, 0 on
padding (and on prompt tokens, if the tensors span the whole sequence). Every
mean over tokens is a :func:`masked_mean`, never a plain ``.mean()``: the public
Safe RLHF-V code uses an all-ones mask, so padding enters every mean (see
``docs/beavertails_v.md``, "Traps in the public training code").

Sign convention: **positive cost = harmful**. A cost sign ``s`` is +1 for an
unsafe response and -1 for a safe one.

Statistics are returned as Python floats, ready to log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saferlhfv.masks import last_real_index

__all__ = [
    "masked_mean",
    "last_real_index",
    "reward_loss",
    "cost_loss",
    "cost_signs",
    "kl_shaped_rewards",
    "kl_shaped_costs",
    "combine_advantages",
    "whiten",
    "group_advantages",
    "budget_advantages",
    "rectified_costs",
    "prompt_rectified_costs",
    "reference_kl",
    "clipped_surrogate",
    "actor_loss",
    "critic_loss",
]


# --------------------------------------------------------------------------- helpers


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``masked_mean(x, m) = sum(x * m) / max(sum(m), 1)``

    Args:
        x: any shape.
        mask: same shape as ``x`` (bool or 0/1 numbers).
        dim: None for one mean over every masked entry (a 0-d tensor); an int for
            one mean per slice along that dimension (that dimension removed).

    Returns:
        The mean. **An empty selection gives 0** (not NaN): an all-padding row
        contributes nothing and cannot poison a loss. Values at masked-out
        positions are never read, so NaN / inf there are harmless.
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} must have the same shape")
    keep = mask.bool()
    total = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)
    count = keep.sum(dim=dim).to(total.dtype)
    return total / count.clamp(min=1)


def _check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


# --------------------------------------------------------------------------- RM-V / CM-V


def reward_loss(better: torch.Tensor, worse: torch.Tensor, reg: float = 1e-3) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise (Bradley-Terry) loss of the reward model RM-V.

    ``L = -mean_b log sigmoid(r_better - r_worse) + reg * mean(r^2)``

    the second mean over all ``2B`` scores (better and worse): it keeps the
    scores near 0, since the pairwise term sees only differences.

    Args:
        better: ``[B]`` end scores of the more helpful responses.
        worse: ``[B]`` end scores of the less helpful responses.
        reg: weight of the score regulariser (``RewardConfig.reg``).

    Returns:
        ``(loss, stats)``; stats: ``accuracy`` (share of pairs with
        ``better > worse``), ``margin`` (mean ``better - worse``),
        ``better_mean``, ``worse_mean``.
    """
    _check_same("better", better, "worse", worse)
    pairwise = -F.logsigmoid(better - worse).mean()
    loss = pairwise + reg * torch.cat([better, worse]).square().mean()
    with torch.no_grad():
        stats = {
            "accuracy": (better > worse).float().mean().item(),
            "margin": (better - worse).float().mean().item(),
            "better_mean": better.float().mean().item(),
            "worse_mean": worse.float().mean().item(),
        }
    return loss, stats


def cost_signs(is_safe: torch.Tensor, harmless_rate: torch.Tensor | None = None, graded: bool = False) -> torch.Tensor:
    """The sign ``s`` of each response for the sign term of :func:`cost_loss`.

    Binary (``graded=False``, the default)::

        s = +1 if unsafe, -1 if safe

    Graded (``graded=True``)::

        s = (+1 if unsafe else -1) * max(|harmless_rate|, 1)

    Why this graded form. The paper's code (safe-rlhf-v) feeds the sign term
    ``-harmless_rate`` itself (a field it calls ``is_*_safe``, rates -3..3), so a
    response rated -3 pushes its cost up with a three times steeper sigmoid than
    one rated -1. Taken literally that has two problems we avoid:

    * a rate of **0** (e.g. a bare refusal, per the BeaverTails-V rubric) gives
      ``s = 0``: the term becomes the constant ``log 2`` with zero gradient, so
      those responses get no sign signal at all. ``max(|rate|, 1)`` keeps them
      at weight 1.
    * the direction would follow the rate, not the binary safety label; where
      the two disagree the label wins here. The direction always comes from
      ``is_safe``; the rate only sets the magnitude.

    Where the label and the rate agree and the rate is non-zero, this equals the
    paper code's sign exactly.

    Args:
        is_safe: ``[B]`` bool (or 0/1) safety labels.
        harmless_rate: ``[B]`` graded harmlessness, -3..3 (required when graded).
        graded: scale the sign by the rate as above (``CostConfig.graded_sign``).

    Returns:
        ``[B]`` float tensor (the rate's dtype if it is floating, else float32),
        never 0.
    """
    safe = is_safe.bool()
    dtype = harmless_rate.dtype if harmless_rate is not None and harmless_rate.is_floating_point() else torch.float32
    sign = torch.where(safe, -1.0, 1.0).to(dtype)
    if not graded:
        return sign
    if harmless_rate is None:
        raise ValueError("graded cost signs need harmless_rate")
    _check_same("is_safe", is_safe, "harmless_rate", harmless_rate)
    return sign * harmless_rate.to(dtype).abs().clamp(min=1.0)


def cost_loss(
    unsafer: torch.Tensor,
    safer: torch.Tensor,
    unsafer_sign: torch.Tensor,
    safer_sign: torch.Tensor,
    reg: float = 1e-3,
    sign_coeff: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the cost model CM-V: a pairwise term and a sign (classification) term.

    ``L = -mean log sigmoid(c_unsafer - c_safer)``
    ``    + sign_coeff * mean[ -log sigmoid(s_unsafer * c_unsafer) - log sigmoid(s_safer * c_safer) ]``
    ``    + reg * mean(c^2)``

    The pairwise term orders the two responses; the sign term anchors the scale
    at 0 so that ``c > 0`` means harmful and ``c < 0`` safe, which is what makes
    a cost budget ``E[C] <= d`` meaningful. Both batch means are over ``B`` pairs;
    the regulariser's over all ``2B`` costs.

    Args:
        unsafer: ``[B]`` end costs of the less safe response of each pair.
        safer: ``[B]`` end costs of the safer response.
        unsafer_sign, safer_sign: ``[B]`` signs from :func:`cost_signs`
            (+ unsafe, - safe; graded signs carry a magnitude).
        reg: weight of the cost regulariser (``CostConfig.reg``).
        sign_coeff: weight of the sign term (``CostConfig.sign_coeff``).

    Returns:
        ``(loss, stats)``; stats: ``accuracy`` (share of pairs with
        ``unsafer > safer``), ``sign_accuracy`` (share of the ``2B`` responses whose
        ``sign(c)`` matches ``sign(s)``; a cost of exactly 0 counts as wrong, a
        sign of 0 is left out; NaN if every sign is 0), ``pairwise_loss``,
        ``sign_loss``, ``unsafer_mean``, ``safer_mean``.
    """
    _check_same("unsafer", unsafer, "safer", safer)
    _check_same("unsafer", unsafer, "unsafer_sign", unsafer_sign)
    _check_same("safer", safer, "safer_sign", safer_sign)
    unsafer_sign = unsafer_sign.to(unsafer.dtype)
    safer_sign = safer_sign.to(safer.dtype)
    pairwise = -F.logsigmoid(unsafer - safer).mean()
    sign_term = (-F.logsigmoid(unsafer_sign * unsafer) - F.logsigmoid(safer_sign * safer)).mean()
    loss = pairwise + sign_coeff * sign_term + reg * torch.cat([unsafer, safer]).square().mean()
    with torch.no_grad():
        costs = torch.cat([unsafer, safer])
        signs = torch.cat([unsafer_sign, safer_sign])
        labelled = signs != 0
        hits = (torch.sign(costs) == torch.sign(signs)) & labelled
        n = int(labelled.sum())
        stats = {
            "accuracy": (unsafer > safer).float().mean().item(),
            "sign_accuracy": hits.sum().item() / n if n else float("nan"),
            "pairwise_loss": pairwise.item(),
            "sign_loss": sign_term.item(),
            "unsafer_mean": unsafer.float().mean().item(),
            "safer_mean": safer.float().mean().item(),
        }
    return loss, stats


# --------------------------------------------------------------------------- PPO: per-token rewards and costs


def _add_at_last_token(per_token: torch.Tensor, end: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``per_token`` with ``end[b]`` added at the last real token of row b (empty rows unchanged)."""
    index, nonempty = last_real_index(mask)
    onehot = F.one_hot(index, per_token.shape[1]).to(per_token.dtype) * nonempty.unsqueeze(1).to(per_token.dtype)
    return per_token + onehot * end.to(per_token.dtype).unsqueeze(1)


def _check_ppo_shapes(end: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    _check_same("logp", logp, "ref_logp", ref_logp)
    _check_same("logp", logp, "mask", mask)
    if end.shape != logp.shape[:1]:
        raise ValueError(f"the end score must be [B] = [{logp.shape[0]}], got {tuple(end.shape)}")


def _clip(end: torch.Tensor, clip_score: float | None) -> torch.Tensor:
    return end if clip_score is None else end.clamp(-clip_score, clip_score)


def kl_shaped_rewards(
    end_reward: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coeff: float,
    clip_score: float | None = None,
) -> torch.Tensor:
    """Per-token rewards for PPO: a KL penalty on every token, the RM-V score at the end.

    ``r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  +  [t = last real token] * clip(R, -c, c)``

    with ``beta = kl_coeff`` and ``c = clip_score``; ``r_t = 0`` on padding. The
    last real token is found from ``mask`` (not position -1, which is a pad for
    every row shorter than the longest). A row with no real token is all zeros
    (it has no token to credit, so dropping its score changes nothing).

    Differences from the public code: it clamps the *sum* (KL term + score) of
    every token to +-clip_score; here only the end score is clipped, so the KL
    term is never cut. They differ only where a token's total leaves +-c: at the
    last token when the KL term pushes a score near c past it, elsewhere only
    when beta * |log-ratio| > c (with the paper's c = 50, beta = 0.02: 2500 nats).

    Args:
        end_reward: ``[B]`` RM-V end scores R.
        logp, ref_logp: ``[B, T]`` log-probabilities of the sampled tokens under
            the actor (at rollout) and the frozen reference.
        mask: ``[B, T]`` 1 on real response tokens.
        kl_coeff: beta (``PPOConfig.kl_coeff``).
        clip_score: c (``PPOConfig.clip_range_score``), None = no clipping.

    Returns:
        ``[B, T]`` rewards, in ``logp``'s dtype.
    """
    _check_ppo_shapes(end_reward, logp, ref_logp, mask)
    keep = mask.bool()
    kl = torch.where(keep, logp - ref_logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return _add_at_last_token(-kl_coeff * kl, _clip(end_reward, clip_score), keep)


def kl_shaped_costs(
    end_cost: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coeff: float,
    clip_score: float | None = None,
    kl_in_cost: bool = False,
) -> torch.Tensor:
    """Per-token costs for PPO: the CM-V score at the last real token.

    ``c_t = [t = last real token] * clip(C, -c, c)                      (kl_in_cost=False, default)``
    ``c_t = +beta * (log pi - log pi_ref)_t + [t = last] * clip(C, -c, c)  (kl_in_cost=True)``

    ``c_t = 0`` on padding. The default follows the paper (``docs/algorithms.md``):
    the KL penalty belongs to the reward only, and it already enters the
    combined advantage ``(A_r - lambda A_c) / (1 + lambda)`` once. The public code
    also adds ``+beta * KL`` to the cost (``kl_in_cost=True``, ``PPOConfig.kl_in_cost``):
    then ``-lambda * A_c`` carries a second ``-lambda * beta * KL``, i.e. the
    effective KL coefficient becomes ``beta`` (not ``beta / (1 + lambda)``), which
    keeps the policy close to the reference however large lambda grows; at the
    price of the cost critic learning a KL it cannot distinguish from harm.

    Args: as :func:`kl_shaped_rewards`, with ``end_cost`` the ``[B]`` CM-V end
        scores C, and ``kl_in_cost`` as above.

    Returns:
        ``[B, T]`` costs, in ``logp``'s dtype.
    """
    _check_ppo_shapes(end_cost, logp, ref_logp, mask)
    keep = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    per_token = kl_coeff * torch.where(keep, logp - ref_logp, zero) if kl_in_cost else torch.zeros_like(logp)
    return _add_at_last_token(per_token, _clip(end_cost, clip_score), keep)


# --------------------------------------------------------------------------- PPO: actor and critics


def combine_advantages(
    reward_adv: torch.Tensor | float, cost_adv: torch.Tensor | float, lam: float | torch.Tensor
) -> torch.Tensor | float:
    """The Lagrangian's advantage: reward against cost at the price lambda, on a fixed scale.

    ``A = (A_r - lambda * A_c) / (1 + lambda)``

    The division by ``1 + lambda`` keeps the advantage's scale fixed as lambda grows (it
    interpolates between "reward only" at lambda = 0 and "cost only" as lambda -> inf). The
    one place this combination is written: the PPO trainer, :func:`actor_loss` and the fast
    dual-dynamics model of :mod:`saferlhfv.dual` (on NumPy arrays) all call it.

    Args:
        reward_adv, cost_adv: advantages (or rewards, costs) of any one shape: tensors, arrays or floats.
        lam: lambda >= 0; a tensor is detached.

    Returns:
        ``A``, of the inputs' shape.
    """
    if isinstance(lam, torch.Tensor):
        lam = lam.detach()
        if isinstance(reward_adv, torch.Tensor):
            lam = lam.to(device=reward_adv.device, dtype=reward_adv.dtype)
    return (reward_adv - lam * cost_adv) / (1.0 + lam)


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the positions where ``mask`` is 1.

    ``whiten(x) = (x - mean_m(x)) / sqrt(var_m(x) + eps)``   (``shift_mean=False`` keeps the mean:
    ``(x - mu) / sigma + mu``), with ``mean_m`` / ``var_m`` masked over every real token.
    Masked-out positions are set to 0.

    Args:
        x, mask: ``[B, T]``.

    Returns:
        ``[B, T]``.
    """
    _check_same("x", x, "mask", mask)
    keep = mask.bool()
    mean = masked_mean(x, keep)
    var = masked_mean((x - mean).square(), keep)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(keep, out, torch.zeros((), dtype=x.dtype, device=x.device))


def _groups(values: torch.Tensor, group: int, what: str) -> torch.Tensor:
    """``[B]`` per-answer values as ``[B / group, group]``, one row per prompt (clear errors otherwise)."""
    if values.dim() != 1:
        raise ValueError(f"{what}: values must be [B], got shape {tuple(values.shape)}")
    if group < 2:
        raise ValueError(f"{what} need >= 2 answers per prompt, got group={group}")
    if values.shape[0] % group:
        raise ValueError(f"batch of {values.shape[0]} answers is not a whole number of groups of {group}")
    return values.view(-1, group)


def group_advantages(scores: torch.Tensor, group: int, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """GRPO's critic-free advantage: each answer's score against the other answers to its prompt.

    ``A_i = (s_i - mean_g(s)) / (sigma + eps)``   over the ``group`` answers ``g`` of one prompt, with

    * ``scale="group"``: ``sigma = std_g(s)``, the group's own spread (DeepSeekMath's GRPO);
    * ``scale="batch"``: ``sigma = std(s)`` over the whole batch (TRL's ``scale_rewards="batch"``):
      a group whose answers barely differ gets small advantages instead of unit-scale noise;
    * ``scale="none"``: ``sigma = 1`` (Dr. GRPO: the centred score alone).

    ``std`` is the sample standard deviation, as in DeepSeekMath and TRL. A group whose answers
    all score the same carries no signal: its advantages are 0 under every scale.

    Args:
        scores: ``[B]`` end scores (RM-V reward or CM-V cost), rows ``group * j .. group * j + group - 1``
            answering prompt ``j``.
        group: answers per prompt, >= 2.
        scale: ``"group"``, ``"batch"`` or ``"none"``.

    Returns:
        ``[B]`` advantages, one per answer (broadcast over its tokens by the caller).
    """
    g = _groups(scores.float(), group, "group advantages")
    centred = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (g.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred.view(-1).to(scores.dtype)


def budget_advantages(
    rewards: torch.Tensor, costs: torch.Tensor, *, group: int, lam: float, budget: float, eps: float = 1e-6
) -> torch.Tensor:
    """Critic-free advantage with the reward centred in its group and the cost against its budget.

    ``S_i = [(R_i - mean_g(R)) - lam * (C_i - budget)] / (1 + lam)``,  ``A_i = S_i / (std(S) + eps)``

    over the ``group`` answers ``g`` of one prompt, the std over the whole batch (sample std). Unlike
    :func:`group_advantages` of the cost, a group whose answers all cost more than the budget is pushed
    down, each answer by its own excess.

    Args:
        rewards: ``[B]`` end rewards (RM-V), rows ``group * j .. group * j + group - 1`` answering prompt ``j``.
        costs: ``[B]`` end costs (CM-V, or RePO's violations), same layout.
        group: answers per prompt, >= 2.
        lam: the Lagrange multiplier, >= 0.
        budget: the cost every answer is measured against (the budget ``d`` of the constraint).

    Returns:
        ``[B]`` advantages, one per answer (broadcast over its tokens by the caller).
    """
    centred = group_advantages(rewards.float(), group, scale="none")
    scores = (centred - lam * (costs.float() - budget)) / (1.0 + lam)
    return (scores / (scores.std() + eps)).to(rewards.dtype)


def rectified_costs(costs: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """RePO's per-answer violation: ``max(0, C(x, y) - d)``, zero for every answer within its budget.

    Args:
        costs: end costs of any shape (positive = harmful).
        threshold: the per-answer budget ``d`` (RePO's critical constraint is ``C(x, y) <= 0``: d = 0).

    Returns:
        tensor of ``costs``'s shape, >= 0.
    """
    return torch.clamp(costs - threshold, min=0.0)


def prompt_rectified_costs(
    costs: torch.Tensor, group: int, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RePO's constraint per *prompt*: ``max(0, E_y C(x, y) - d)``, and the per-answer costs of its gradient.

    ``E_y C(x, y)`` is estimated by the mean of the prompt's ``group`` answers. By the score-function
    identity ``grad max(0, E_y C - d) = 1[E_y C > d] E_y[(C(x, y) - d) grad log pi(y | x)]`` (``d`` is a
    baseline within the prompt), so each answer of a violating prompt carries ``C - d`` (a safe answer
    there is rewarded, an unsafe one penalised) and every answer of a prompt within budget carries 0.

    Args:
        costs: ``[B]`` end costs, rows ``group * j .. group * j + group - 1`` answering prompt ``j``.
        group: answers per prompt, >= 2.
        threshold: the per-prompt budget ``d``.

    Returns:
        ``(answer_costs [B], violations [B / group])``: ``1[mean_g C > d] (C - d)`` per answer and
        ``max(0, mean_g C - d)`` per prompt.
    """
    g = _groups(costs, group, "per-prompt constraints")
    excess = g.mean(dim=1) - threshold
    answer_costs = (excess > 0).to(costs.dtype).unsqueeze(1) * (g - threshold)
    return answer_costs.reshape(-1), torch.clamp(excess, min=0.0)


def reference_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_ref) per token, the unbiased non-negative estimator GRPO adds to its loss.

    ``k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1``   (Schulman's "k3"; >= 0, 0 iff equal),
    masked mean over the real tokens. The gradient flows through ``logp``; ``ref_logp`` is a constant.

    Args:
        logp, ref_logp, mask: ``[B, T]``.

    Returns:
        scalar tensor.
    """
    _check_same("logp", logp, "ref_logp", ref_logp)
    _check_same("logp", logp, "mask", mask)
    delta = ref_logp.detach().to(logp.dtype) - logp
    return masked_mean(torch.exp(delta) - delta - 1.0, mask)


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate on given per-token advantages.

    ``rho = exp(log pi(a|s) - log pi_old(a|s))``
    ``L = -masked_mean( min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) )``

    The advantages and ``old_logp`` are constants: nothing flows back into them. The mean is over
    every real token of the batch (a long response weighs in proportion to its length); the
    public code averages per sequence first.

    Args:
        logp: ``[B, T]`` log-probabilities of the sampled tokens under the current actor (with grad).
        old_logp: ``[B, T]`` the same at rollout time.
        advantages: ``[B, T]`` A (e.g. :func:`combine_advantages` of the GAE advantages).
        mask: ``[B, T]`` 1 on real response tokens.
        clip: eps (``PPOConfig.clip_range_ratio``).

    Returns:
        ``(loss, stats)``; stats: ``clip_fraction`` (share of real tokens where
        ``|rho - 1| > eps``), ``approx_kl`` (masked mean of ``(rho - 1) - log rho``,
        an unbiased, non-negative estimate of KL(pi_old || pi)), ``ratio_mean``,
        ``advantage_mean``.
    """
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask)):
        _check_same("logp", logp, name, t)
    adv = advantages.detach().to(logp.dtype)
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(((ratio - 1.0).abs() > clip).to(logp.dtype), mask).item(),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "advantage_mean": masked_mean(adv, mask).item(),
        }
    return loss, stats


def actor_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    reward_adv: torch.Tensor,
    cost_adv: torch.Tensor,
    lam: float | torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-Lagrangian clipped surrogate on the combined advantage.

    ``A = (A_r - lambda * A_c) / (1 + lambda)``            (:func:`combine_advantages`)
    ``L = -masked_mean( min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) )``   (:func:`clipped_surrogate`)

    lambda, the advantages and ``old_logp`` are constants here: nothing flows back into them
    (lambda has its own update, :class:`~saferlhfv.algorithms.lagrange.Lagrange`).

    Args:
        logp: ``[B, T]`` log-probabilities of the sampled tokens under the current actor (with grad).
        old_logp: ``[B, T]`` the same at rollout time.
        reward_adv, cost_adv: ``[B, T]`` GAE advantages of reward and cost.
        lam: lambda >= 0, a float or a tensor (detached here).
        mask: ``[B, T]`` 1 on real response tokens.
        clip: eps (``PPOConfig.clip_range_ratio``).

    Returns:
        ``(loss, stats)`` as :func:`clipped_surrogate`.
    """
    for name, t in (("reward_adv", reward_adv), ("cost_adv", cost_adv)):
        _check_same("logp", logp, name, t)
    lam_value = lam.detach() if isinstance(lam, torch.Tensor) else torch.tensor(float(lam))
    adv = combine_advantages(reward_adv.detach(), cost_adv.detach(), lam_value.to(logp.device, logp.dtype))
    return clipped_surrogate(logp, old_logp, adv, mask, clip)


def critic_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 5.0,
) -> torch.Tensor:
    """Clipped value loss of a critic (reward or cost).

    ``V_clip = clip(V, V_old - c, V_old + c)``
    ``L = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )``

    The max makes the loss pessimistic: a step that moves a value more than
    ``c`` away from its rollout value gets no credit for doing so.

    Args:
        values: ``[B, T]`` current critic values (with grad).
        old_values: ``[B, T]`` the critic's values at rollout.
        returns: ``[B, T]`` GAE returns (targets).
        mask: ``[B, T]`` 1 on real response tokens.
        clip: c (``PPOConfig.clip_range_value``).

    Returns:
        A 0-d loss.
    """
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        _check_same("values", values, name, t)
    old_values, returns = old_values.detach(), returns.detach()
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    per_token = torch.maximum((values - returns).square(), (clipped - returns).square())
    return 0.5 * masked_mean(per_token, mask)
