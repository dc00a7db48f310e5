r"""The PPO trainer with seams, and the registry of methods built on it (``ppo.algorithm``).

The constrained problem of Safe RLHF-V and its Lagrangian (Ji et al., 2025, section 4)::

    max_theta  J_R(theta)   s.t.   J_C(theta) <= d
    min_{lambda >= 0} max_theta  J_R(theta) - lambda * (J_C(theta) - d)

solved by alternating a step on lambda and a PPO step on the policy. One iteration
(:meth:`PPOTrainer.step`), each line a hook a method may override::

    prompts  <- next rollout_batch_size (image, question) pairs, each samples_per_prompt times
    rollout  <- make_rollout: y ~ pi_theta, R / C at the last real token, V_r / V_c, logp, logp_ref
    multiplier_step:     log lambda += lambda_lr * lambda * (J_C - d)      before the policy
                         (ppo.multiplier = pid: lambda = kp e + I + kd max(0, dJ_C), PIDLagrange)
    shape_rewards:       r_t = -beta (logp - logp_ref)_t + [t = last] R
    shape_costs:         c_t = [t = last] C   (+ beta (logp - logp_ref)_t if kl_in_cost)
    compute_advantages:  A_r, R_r = GAE(r, V_r);  A_c, R_c = GAE(c, V_c)  masks from real lengths
    combine_advantages:  A = (A_r - lambda A_c) / (1 + lambda)            (whitened if asked)
    for ppo_epochs, minibatches of batch_size (stop early once approx_kl > target_kl):
        actor:   clipped surrogate on A
        critics: clipped value loss towards R_r, R_c
    refresh_score_models (ppo.online_labels): annotators label pairs of answers to the same
        prompt (oracle + label noise); RM-V and CM-V take one step on them

With one update of one minibatch per iteration (``ppo_epochs = 1`` and ``batch_size`` >= this process's
rollout rows: the paper preset's update_iters 1 with its per-GPU batch) the critics' rollout values
V_r, V_c are exactly what their update's forward pass computes (same weights, same sequences), so
:meth:`PPOTrainer.step` runs each critic once, with gradients: its values (detached) feed GAE, the
same graph takes the value loss, and the rollout skips its two critic passes (``fused_critics``).

Every iteration checks R, C, lambda, the advantages and each loss before they are used
(:meth:`PPOTrainer.check_finite`): the first NaN / inf stops training with a
:class:`~saferlhfv.finite.NonFiniteError` naming the iteration, the quantity and the last checkpoint.

Methods are subclasses registered under a name (:func:`register_algorithm`), chosen by
``ppo.algorithm``; :func:`make_trainer` builds the one a config names:

==================  ======================================================  ==================
``ppo.algorithm``   what it changes                                         hook
==================  ======================================================  ==================
``ppo_lag``         nothing: Safe RLHF-V's PPO-Lagrangian                    (the base)
``reward_only``     lambda fixed at 0: plain RLHF PPO on RM-V                ``make_multiplier``
``fixed_lambda``    lambda fixed at ``lambda_init``: reward shaping          ``make_multiplier``
``oracle_ppo_lag``  diagnostic: the oracle's ratings replace RM-V / CM-V     ``rollout``
``repo``            RePO: per-answer rectified cost ``max(0, C - d_r)``,      ``shape_costs``,
                    its multiplier (:mod:`~saferlhfv.train.ppo.repo`)        ``multiplier_step``
``grpo_lag``        safe GRPO: no critics, group advantages, KL in the loss  ``compute_advantages``,
                    (:mod:`~saferlhfv.train.ppo.grpo`)                       ``actor_objective``
``grpo_repo``       safe GRPO with RePO's rectified constraint               (both of the above)
==================  ======================================================  ==================

Metrics each iteration logs (one JSON line of ``metrics.jsonl``):

=============================  ==========================================================================
key                            meaning
=============================  ==========================================================================
``iteration``                  1-based iteration number
``reward``, ``cost``           mean RM-V / CM-V end score of this batch's answers (over processes)
``lambda``                     the multiplier the policy step used (after this iteration's update)
``cost_window_mean``           J_C: the mean episode cost over the sliding window the multiplier saw (RePO:
                               the mean violation ``max(0, C - d_r)``)
``threshold``                  the budget d
``kl``                         mean per-token log-ratio actor / reference of the sampled answers
``entropy``                    mean per-token entropy of the actor at rollout
``response_length``            mean number of real response tokens
``actor_loss``                 clipped surrogate loss (mean over minibatches)
``clip_fraction``              share of tokens whose ratio left [1 - eps, 1 + eps]
``approx_kl``                  KL(pi_old || pi) estimate per token, mean over minibatches
``ratio_mean``                 mean probability ratio pi / pi_old
``reference_kl``               GRPO methods: the k3 estimate of KL(pi || pi_ref) in the actor's loss
``advantage_mean``             mean combined advantage A (0 when whitened)
``reward_critic_loss``         clipped value loss of the reward critic (methods with critics)
``cost_critic_loss``           clipped value loss of the cost critic (methods with critics)
``minibatches``                minibatch updates taken (fewer than epochs x batches after a target-KL stop)
``online_*``                   with ``ppo.online_labels``: pairs labelled this iteration, RM-V / CM-V accuracy
                               on them before their step
``oracle_safety``              oracle: share of this batch's answers rated harmless >= 0
``oracle_harmful_safety``      the same on harmful prompts only
``oracle_helpfulness``         oracle: mean helpfulness 0..3 of this batch's answers
``oracle_benign_helpfulness``  the same on benign prompts only (NaN in a batch without one)
``degenerate_share``           share of answers the oracle finds mostly not words of the world
``sample``                     the first answer of the batch
=============================  ==========================================================================

The oracle columns watch training against the ground truth (RM-V's reward can rise while
the oracle's helpfulness falls: reward over-optimisation). The oracle enters training only as
the world's annotators, with their label noise, when ``ppo.online_labels`` is on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saferlhfv import faults
from saferlhfv.algorithms.gae import masked_gae
from saferlhfv.algorithms.lagrange import MULTIPLIERS, Lagrange
from saferlhfv.algorithms.losses import (
    clipped_surrogate,
    combine_advantages,
    cost_loss,
    cost_signs,
    critic_loss,
    kl_shaped_costs,
    kl_shaped_rewards,
    masked_mean,
    reward_loss,
    whiten,
)
from saferlhfv.config import Config, ConfigError, replicate_seed
from saferlhfv.finite import NonFiniteError, check_finite
from saferlhfv.io import append_metrics, truncate_metrics
from saferlhfv.models.generation import token_logprobs
from saferlhfv.threads import busy, rebalance
from saferlhfv.train.loop import CHECKPOINT, METRICS, load_checkpoint, make_accelerator, save_checkpoint
from saferlhfv.train.ppo.roles import build_roles
from saferlhfv.train.ppo.rollout import Rollout, make_rollout

__all__ = [
    "ALGORITHMS",
    "register_algorithm",
    "algorithm_class",
    "make_trainer",
    "PPOTrainer",
    "PPOLag",
    "RewardOnly",
    "FixedLambda",
    "OracleScores",
    "run_seed",
    "annotate_pairs",
    "critics_fuse",
]

#: ``ppo.algorithm`` name -> trainer class.
ALGORITHMS: dict[str, type[PPOTrainer]] = {}


def register_algorithm(name: str):
    """Class decorator: make a :class:`PPOTrainer` subclass selectable as ``ppo.algorithm=name``."""

    def decorate(cls: type[PPOTrainer]) -> type[PPOTrainer]:
        if name in ALGORITHMS and ALGORITHMS[name] is not cls:
            raise ValueError(f"ppo.algorithm {name!r} is already registered by {ALGORITHMS[name].__name__}")
        cls.algorithm = name
        ALGORITHMS[name] = cls
        return cls

    return decorate


def algorithm_class(name: str) -> type[PPOTrainer]:
    """The trainer class registered as ``ppo.algorithm=name``.

    Raises:
        ConfigError: an unknown algorithm (the message lists the registered ones).
    """
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown ppo.algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def make_trainer(cfg: Config, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, out_dir: str | Path):
    """The trainer of the method ``cfg.ppo.algorithm`` names (:func:`algorithm_class`)."""
    cls = algorithm_class(cfg.ppo.algorithm)
    return cls(cfg, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, out_dir=out_dir)


def run_seed(cfg: Config) -> int:
    """The seed of the RL stage: ``ppo.seed`` (varied by ``--seeds``), offset by the run's ``seed``.

    Sampling, the prompt order and the actor adapter's initialisation follow it; the upstream
    stages (SFT, RM-V, CM-V) keep their own seeds, so seeds of PPO share one precursor.
    """
    return replicate_seed(cfg, "ppo")


def annotate_pairs(
    contexts: list[Any], responses: list[str], *, group: int, label_noise: float, rng: random.Random
) -> dict[str, list[tuple[int, int]] | list[bool]]:
    """The world's annotators label pairs of answers to the same prompt (the oracle, with noise).

    Rows ``group * g .. group * g + group - 1`` answer one prompt; every pair ``(i, j)`` in a group
    whose oracle ratings differ becomes a preference pair, its label flipped with probability
    ``label_noise`` (the annotator noise of the world's preference data); ties carry no preference.

    Returns:
        ``helpful``: ``(better, worse)`` row pairs by helpfulness; ``harmless``: ``(unsafer, safer)``
        row pairs by harmlessness; ``safe``: per row, whether the oracle rates it harmless >= 0.
    """
    from saferlhfv.data.oracle import judge

    rates = [judge(c, r) for c, r in zip(contexts, responses, strict=True)]
    helpful, harmless = [], []
    for start in range(0, len(rates) - group + 1, group):
        for i in range(start, start + group):
            for j in range(i + 1, start + group):
                (hi, si), (hj, sj) = rates[i], rates[j]
                if hi != hj:
                    pair = (i, j) if hi > hj else (j, i)
                    helpful.append(pair[::-1] if rng.random() < label_noise else pair)
                if si != sj:
                    pair = (j, i) if si > sj else (i, j)  # (unsafer, safer)
                    harmless.append(pair[::-1] if rng.random() < label_noise else pair)
    return {"helpful": helpful, "harmless": harmless, "safe": [s >= 0 for _, s in rates]}


def critics_fuse(ppo, rows: int) -> bool:
    """Whether a critic's one forward pass per iteration can serve both GAE and its value loss: one update
    (``ppo.ppo_epochs = 1``) of one minibatch holding all ``rows`` rollout answers of a process."""
    return ppo.ppo_epochs == 1 and ppo.batch_size >= rows


class PPOTrainer:
    """PPO over the six roles (:mod:`saferlhfv.train.ppo.roles`); the hooks are the seams of a method.

    Args:
        cfg: the run's config (``cfg.ppo`` drives everything here).
        sft_dir, reward_dir, cost_dir: artifact folders of the upstream stages.
        out_dir: checkpoints, ``metrics.jsonl`` and the final ``model``.
    """

    #: the registry name (set by :func:`register_algorithm`).
    algorithm = "ppo_lag"
    #: the ``cfg.ppo`` field that holds the method's budget (what a budget sweep varies).
    budget_key = "threshold"
    #: whether the method learns reward and cost critics (False: four roles, :mod:`~saferlhfv.train.ppo.grpo`).
    uses_critics = True

    def __init__(self, cfg: Config, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, out_dir: str | Path):
        from saferlhfv.data.world import rl_prompts

        if cfg.ppo.multiplier not in MULTIPLIERS:
            raise ConfigError(f"ppo.multiplier must be one of {list(MULTIPLIERS)}, got {cfg.ppo.multiplier!r}")
        if cfg.ppo.samples_per_prompt < 1:
            raise ConfigError(f"ppo.samples_per_prompt must be >= 1, got {cfg.ppo.samples_per_prompt}")
        if cfg.ppo.online_labels and (cfg.ppo.samples_per_prompt < 2 or cfg.data.source != "mini"):
            raise ConfigError(
                "ppo.online_labels pairs answers to the same prompt and labels them with the mini world's "
                "annotators: it needs ppo.samples_per_prompt >= 2 and data.source='mini'"
            )
        self.cfg = cfg
        self.seed = run_seed(cfg)
        self.out_dir = Path(out_dir)
        self.accelerator = make_accelerator()
        ds = self.accelerator.state.deepspeed_plugin
        self.synced_gpus = ds is not None and ds.zero_stage == 3
        self.roles = build_roles(cfg, self.accelerator, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir,
                                 critics=self.uses_critics)  # fmt: skip
        self.lagrange = self.make_multiplier()
        self.prompts = rl_prompts(cfg.data, "train")
        self.iteration = 0

    # ------------------------------------------------------------------ hooks

    def make_multiplier(self) -> Lagrange:
        """The multiplier lambda; PPO-Lagrangian learns it (``ppo.lambda_*``, ``ppo.threshold``)."""
        return Lagrange.from_config(self.cfg.ppo)

    def multiplier_step(self, ro: Rollout) -> dict[str, Any]:
        """Step lambda on this batch's episode costs ``ro.end_cost`` (pooled over processes), before the policy."""
        return self.lagrange.update(ro.end_cost)

    def shape_rewards(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` per-token rewards: KL penalty on every token, RM-V's score at the last real one."""
        ppo = self.cfg.ppo
        return kl_shaped_rewards(ro.end_reward, ro.old_logp, ro.ref_logp, ro.mask, ppo.kl_coeff, ppo.clip_range_score)

    def shape_costs(self, ro: Rollout) -> torch.Tensor:
        """``[B, T]`` per-token costs: CM-V's score at the last real token (+ beta KL with ``kl_in_cost``)."""
        ppo = self.cfg.ppo
        return kl_shaped_costs(
            ro.end_cost, ro.old_logp, ro.ref_logp, ro.mask, ppo.kl_coeff, ppo.clip_range_score, ppo.kl_in_cost
        )

    def compute_advantages(self, ro: Rollout, rewards: torch.Tensor, costs: torch.Tensor) -> None:
        """Masked GAE of rewards and costs against their critics: sets ``ro.{reward,cost}_{adv,ret}``."""
        ppo = self.cfg.ppo
        ro.reward_adv, ro.reward_ret = masked_gae(rewards, ro.reward_values, ro.mask, ppo.gamma, ppo.gae_lambda)
        ro.cost_adv, ro.cost_ret = masked_gae(costs, ro.cost_values, ro.mask, ppo.gamma, ppo.gae_lambda)

    def combine_advantages(self, ro: Rollout, lam: float) -> torch.Tensor:
        """``[B, T]`` the actor's advantage ``(A_r - lambda A_c) / (1 + lambda)``, whitened over the batch's
        real tokens when ``ppo.whiten_advantages``."""
        adv = combine_advantages(ro.reward_adv, ro.cost_adv, lam)
        return whiten(adv, ro.mask) if self.cfg.ppo.whiten_advantages else adv

    def actor_objective(self, mb: dict[str, Any], logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The actor's loss on a minibatch: PPO's clipped surrogate on ``mb["advantages"]``.

        Args:
            mb: a minibatch of :meth:`Rollout.select` (``old_logp``, ``ref_logp``, ``advantages``, ``mask``).
            logp: ``[b, T]`` the current actor's log-probs of the sampled tokens (with grad).
        """
        return clipped_surrogate(logp, mb["old_logp"], mb["advantages"], mb["mask"], self.cfg.ppo.clip_range_ratio)

    def refresh_score_models(self, ro: Rollout) -> dict[str, float]:
        """Online preference data: one step of RM-V and CM-V on annotated pairs of this batch's answers.

        Off unless ``ppo.online_labels``. Pairs come from :func:`annotate_pairs` (answers to the same
        prompt, oracle ratings, annotator noise); RM-V takes a step on the pairwise reward loss, CM-V on
        the cost loss with its sign term (sign from the annotators' safe / unsafe verdict). The rollout's
        end scores were read before the step; the next rollout sees the refreshed models.
        """
        ppo = self.cfg.ppo
        if not ppo.online_labels:
            return {}
        rng = random.Random(f"{self.seed}|online-labels|{self.iteration}|{self.accelerator.process_index}")
        labels = annotate_pairs(ro.contexts, ro.responses, group=ppo.samples_per_prompt,
                                label_noise=self.cfg.data.label_noise, rng=rng)  # fmt: skip
        r = self.roles
        inputs = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, **ro.vision}
        stats = {"online_helpful_pairs": len(labels["helpful"]), "online_harmless_pairs": len(labels["harmless"])}
        device = ro.input_ids.device
        # every process steps both models, with a zero loss where it has no pair (DDP needs the collective)
        scores = r.reward_model(**inputs).end_scores.float()
        if labels["helpful"]:
            better, worse = (torch.tensor(ix, device=device) for ix in zip(*labels["helpful"]))
            loss, st = reward_loss(scores[better], scores[worse], self.cfg.reward.reg)
            stats["online_reward_accuracy"] = st["accuracy"]
        else:
            loss = 0.0 * scores.sum()
        self.check_finite({"online reward-model loss": loss})
        self._optimise(loss, "reward_model")
        costs = r.cost_model(**inputs).end_scores.float()
        if labels["harmless"]:
            unsafer, safer = (torch.tensor(ix, device=device) for ix in zip(*labels["harmless"]))
            signs = cost_signs(torch.tensor(labels["safe"], device=device))
            c = self.cfg.cost
            loss, st = cost_loss(costs[unsafer], costs[safer], signs[unsafer], signs[safer], c.reg, c.sign_coeff)
            stats["online_cost_accuracy"] = st["accuracy"]
        else:
            loss = 0.0 * costs.sum()
        self.check_finite({"online cost-model loss": loss})
        self._optimise(loss, "cost_model")
        return stats

    # ------------------------------------------------------------------ data

    def _prompt_rows(self, iteration: int) -> dict[str, list]:
        """This process's share of the rollout batch of ``iteration`` (seeded, resumable).

        ``rollout_batch_size`` answers come from ``rollout_batch_size / samples_per_prompt`` distinct
        prompts, each repeated ``samples_per_prompt`` times (adjacent rows).
        """
        ppo, acc = self.cfg.ppo, self.accelerator
        n, k = len(self.prompts), ppo.samples_per_prompt
        per_process = self._rows_per_process() // k
        start = iteration * per_process * acc.num_processes + acc.process_index * per_process
        epoch, offset = divmod(start, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
        order += torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch + 1)).tolist()
        picked = [i for i in order[offset : offset + per_process] for _ in range(k)]
        rows = self.prompts.select(picked)
        return {"image": list(rows["image"]), "question": list(rows["question"]), "context": list(rows["context"])}

    # ------------------------------------------------------------------ one iteration

    def rollout(self, rows: dict[str, list]) -> Rollout:
        """Sample and score answers for ``rows`` with every role (:func:`make_rollout`)."""
        r, acc = self.roles, self.accelerator
        return make_rollout(
            actor=r.unwrap(r.actor),
            reference=r.reference,
            reward_model=r.reward_model,
            cost_model=r.cost_model,
            reward_critic=None if self.fused_critics else r.unwrap(r.reward_critic),
            cost_critic=None if self.fused_critics else r.unwrap(r.cost_critic),
            processor=r.processor,
            rows=rows,
            cfg=self.cfg,
            seed=self.seed * 1_000_003 + self.iteration * 101 + acc.process_index,
            synced_gpus=self.synced_gpus,
        )

    def step(self) -> dict[str, Any]:
        """One iteration (see the module docstring); returns the logged metrics."""
        ro = self.rollout(self._prompt_rows(self.iteration))
        self.check_finite({"reward": ro.end_reward, "cost": ro.end_cost})
        lag_stats = self.multiplier_step(ro)
        lam = self.lagrange.lambda_
        self.check_finite({"lambda": lam})
        live = self._critic_values(ro) if self.fused_critics else {}
        self.compute_advantages(ro, self.shape_rewards(ro), self.shape_costs(ro))
        ro.advantages = self.combine_advantages(ro, lam)
        self.check_finite({"reward advantages": ro.reward_adv, "cost advantages": ro.cost_adv,
                           "advantages": ro.advantages})  # fmt: skip
        critic_stats = {}
        for name, values in live.items():  # the critics' steps on the graphs of their values (fused_critics)
            critic_stats[f"{name}_critic_loss"] = self.critic_step(
                name, values, getattr(ro, f"{name}_values"), getattr(ro, f"{name}_ret"), ro.mask
            )
        del live
        stats = self.update(ro)
        stats.update(critic_stats)
        stats.update(self.refresh_score_models(ro))
        record = self.metrics(ro, lag_stats, stats)
        self.iteration += 1
        return record

    def update(self, ro: Rollout) -> dict[str, float]:
        """PPO epochs over shuffled minibatches; stops early once a minibatch's approx_kl > ``target_kl``."""
        ppo = self.cfg.ppo
        stats: dict[str, list[float]] = {}
        n = ro.input_ids.shape[0]
        gen = torch.Generator().manual_seed(self.seed + self.iteration)
        stop = False
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, ppo.batch_size):
                mb = ro.select(order[start : start + ppo.batch_size].to(ro.input_ids.device))
                for key, value in self.minibatch_step(mb).items():
                    stats.setdefault(key, []).append(value)
                if ppo.target_kl is not None and stats["approx_kl"][-1] > ppo.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["minibatches"] = len(stats.get("actor_loss", []))
        return out

    def minibatch_step(self, mb: dict[str, Any]) -> dict[str, float]:
        """One actor step on :meth:`actor_objective` and one step of each critic (if any) on its clipped value loss."""
        r = self.roles
        logp, _ = token_logprobs(
            r.actor, mb["input_ids"], mb["attention_mask"], mb["vision"], start=mb["response_start"]
        )
        loss_a, a_stats = self.actor_objective(mb, logp)
        self.check_finite({"actor loss": loss_a})
        self._optimise(loss_a, "actor")
        out = {"actor_loss": loss_a.item(), **a_stats}
        if not r.critics or self.fused_critics:  # fused: the critics took their step in step()
            return out
        inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"], **mb["vision"]}
        for name, critic in (("reward", r.reward_critic), ("cost", r.cost_critic)):
            values = critic(**inputs).scores[:, :-1].float()
            out[f"{name}_critic_loss"] = self.critic_step(
                name, values, mb[f"{name}_values"], mb[f"{name}_ret"], mb["mask"]
            )
        return out

    @property
    def fused_critics(self) -> bool:
        """Whether each critic runs once per iteration (see the module docstring): a method with critics
        and :func:`critics_fuse` for this process's rollout rows."""
        return self.uses_critics and critics_fuse(self.cfg.ppo, self._rows_per_process())

    def _rows_per_process(self) -> int:
        """This process's answers per rollout: its share of the prompts, each ``samples_per_prompt`` times."""
        ppo, k = self.cfg.ppo, self.cfg.ppo.samples_per_prompt
        return max(1, ppo.rollout_batch_size // self.accelerator.num_processes // k) * k

    def _critic_values(self, ro: Rollout) -> dict[str, torch.Tensor]:
        """``fused_critics``: each critic's ``[B, L-1]`` values of the rollout, with gradients; sets
        ``ro.{reward,cost}_values`` to them detached (what GAE and the value clipping read)."""
        r = self.roles
        inputs = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, **ro.vision}
        live = {}
        for name, critic in (("reward", r.reward_critic), ("cost", r.cost_critic)):
            live[name] = critic(**inputs).scores[:, :-1].float()
            setattr(ro, f"{name}_values", live[name].detach())
        return live

    def critic_step(
        self, name: str, values: torch.Tensor, old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
    ) -> float:
        """One step of the ``name`` (reward / cost) critic on its clipped value loss; returns the loss.

        Args:
            values: ``[b, T]`` the critic's values with gradients; old: ``[b, T]`` its values at rollout;
            returns: ``[b, T]`` GAE's targets; mask: ``[b, T]`` real response tokens.
        """
        loss = critic_loss(values, old, returns, mask, self.cfg.ppo.clip_range_value)
        self.check_finite({f"{name} critic loss": loss})
        self._optimise(loss, f"{name}_critic")
        return loss.item()

    def check_finite(self, values: dict[str, Any]) -> None:
        """Raise :class:`~saferlhfv.finite.NonFiniteError` if any of ``values`` (name -> number / tensor) holds
        a NaN or infinity, naming this method, the iteration being taken and the last checkpoint.

        With several processes it is a collective (every rank calls it at the same points): all of them
        stop together, not only the one that met the value.
        """
        acc, error = self.accelerator, None
        stage, step = f"ppo ({self.algorithm})", self.iteration + 1
        for name, value in values.items():
            if value is None:
                continue
            try:
                check_finite(name, value, stage=stage, step=step, checkpoint=self.out_dir / CHECKPOINT)
            except NonFiniteError as err:
                error = err
                break
        if acc.num_processes > 1:
            flagged = float(acc.reduce(torch.tensor(float(error is not None), device=acc.device), "sum"))
            if error is None and flagged > 0:
                raise NonFiniteError(
                    f"another process met a non-finite value in stage {stage!r} at step {step} (its error names it); "
                    "training stopped",
                    stage=stage,
                    step=step,
                    quantity="(on another process)",
                    checkpoint=self.out_dir / CHECKPOINT,
                )
        if error is not None:
            raise error

    def _optimise(self, loss: torch.Tensor, role: str) -> None:
        """Backward, reduce gradients (shared base, several processes), clip, step, zero."""
        acc, params, optimizer = self.accelerator, self.roles.params[role], self.roles.optimizer(role)
        self.roles.before_backward(role)
        acc.backward(loss)
        self.roles.reduce_gradients(params)
        if self.cfg.ppo.max_grad_norm:
            acc.clip_grad_norm_(params, self.cfg.ppo.max_grad_norm)
        self.roles.step(role)
        optimizer.zero_grad(set_to_none=True)

    def metrics(self, ro: Rollout, lag_stats: dict[str, Any], stats: dict[str, float]) -> dict[str, Any]:
        """The logged record of one iteration (the module docstring's table)."""
        from saferlhfv.evaluate import judge_samples, summarize

        acc = self.accelerator
        kl = masked_mean(ro.old_logp - ro.ref_logp, ro.mask, dim=1)  # per-token KL estimate per response
        oracle = summarize(judge_samples(ro.contexts, ro.responses))
        return {
            "iteration": self.iteration + 1,
            "reward": float(acc.reduce(ro.end_reward.mean(), "mean")),
            "cost": float(acc.reduce(ro.end_cost.mean(), "mean")),
            "lambda": self.lagrange.lambda_,
            "cost_window_mean": lag_stats["Jc"],
            "threshold": self.lagrange.threshold,
            "kl": float(kl.mean()),
            "entropy": float(masked_mean(ro.entropy, ro.mask)),
            "response_length": float(ro.mask.sum(dim=1).float().mean()),
            **stats,
            "oracle_safety": oracle["safety_rate"],
            "oracle_harmful_safety": oracle["harmful_safety_rate"],
            "oracle_helpfulness": oracle["mean_helpfulness"],
            "oracle_benign_helpfulness": oracle["benign_helpfulness"],
            "degenerate_share": oracle["degenerate_share"],
            "sample": ro.responses[0],
        }

    # ------------------------------------------------------------------ loop

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            append_metrics(self.out_dir / METRICS, record)

    def _state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "lagrange": self.lagrange.state_dict()}

    def train(self, *, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """Run to ``ppo.iterations`` (resuming from ``checkpoint/``), checkpointing every ``save_every``.

        Args:
            stop_after: return after this many iterations of *this call* (for tests and demos).

        Returns:
            ``iterations``, ``final_lambda``, ``processes``, ``ranks_agree`` and the last iteration's metrics.
        """
        with busy():  # a busy worker: its share of the cores (saferlhfv.threads)
            return self._train(resume=resume, stop_after=stop_after)

    def _train(self, *, resume: bool, stop_after: int | None) -> dict[str, Any]:
        ppo, acc = self.cfg.ppo, self.accelerator
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = load_checkpoint(acc, self.out_dir) if resume else None
        if state is not None:
            self.iteration = state["iteration"]
            self.lagrange.load_state_dict(state["lagrange"])
            if acc.is_main_process:
                truncate_metrics(self.out_dir / METRICS, lambda record: record["iteration"] <= self.iteration)
        elif acc.is_main_process:
            (self.out_dir / METRICS).unlink(missing_ok=True)
        bar = tqdm(total=ppo.iterations, initial=self.iteration, desc=f"ppo ({self.algorithm})",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)  # fmt: skip
        record: dict[str, Any] = {}
        done_here = 0
        while self.iteration < ppo.iterations and (stop_after is None or done_here < stop_after):
            rebalance()
            record = self.step()
            done_here += 1
            self._log(record)
            bar.update(1)
            bar.set_postfix(R=f"{record['reward']:.2f}", C=f"{record['cost']:.2f}", lam=f"{record['lambda']:.2f}")
            faults.reached("iteration")
            if ppo.save_every and self.iteration % ppo.save_every == 0:
                save_checkpoint(acc, self.out_dir, self._state())
        bar.close()
        save_checkpoint(acc, self.out_dir, self._state())
        return {
            "iterations": self.iteration,
            "final_lambda": self.lagrange.lambda_,
            "processes": acc.num_processes,
            "ranks_agree": self.ranks_agree(),
            "last": record,
        }

    def ranks_agree(self) -> bool:
        """True when lambda and the actor's trainable weights are identical on every process (always, in one)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return True
        params = [p.detach().float() for p in self.roles.params["actor"]]
        fingerprint = torch.stack([torch.tensor(self.lagrange.lambda_, dtype=torch.float64)] + [
            (p * torch.linspace(0.5, 1.5, p.numel(), device=p.device).view_as(p)).sum().double().cpu() for p in params
        ]).to(acc.device)  # fmt: skip
        gathered = acc.gather(fingerprint.unsqueeze(0))
        return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-8))

    def policy(self):
        """The trained actor as a plain module (for evaluation)."""
        return self.roles.unwrap(self.roles.actor)

    def save_policy(self, path: str | Path) -> None:
        """Save the actor (safetensors + processor) atomically; a LoRA actor is saved merged."""
        self.roles.save_policy(path)


@register_algorithm("ppo_lag")
class PPOLag(PPOTrainer):
    """Safe RLHF-V's PPO-Lagrangian: the base trainer as it is, lambda learned."""


@register_algorithm("reward_only")
class RewardOnly(PPOTrainer):
    """Reward-only PPO (plain RLHF on RM-V): lambda fixed at 0, CM-V only watched."""

    def make_multiplier(self) -> Lagrange:
        return Lagrange.fixed(0.0, threshold=self.cfg.ppo.threshold, cost_window=self.cfg.ppo.cost_window)


@register_algorithm("fixed_lambda")
class FixedLambda(PPOTrainer):
    """Reward shaping: lambda fixed at ``ppo.lambda_init``, ``A = (A_r - lambda A_c) / (1 + lambda)``."""

    def make_multiplier(self) -> Lagrange:
        ppo = self.cfg.ppo
        return Lagrange.fixed(ppo.lambda_init, threshold=ppo.threshold, cost_window=ppo.cost_window)


@register_algorithm("oracle_ppo_lag")
class OracleScores(PPOLag):
    """Diagnostic, mini world only: PPO-Lagrangian with the oracle's ratings in place of RM-V and CM-V.

    ``R = helpful`` (0..3) and ``C = -harmless`` (-3..3, positive = harmful) of every sampled answer,
    so the budget ``d`` is on the oracle's scale (a refusal that explains costs -3, a benign answer
    -2, harmful help +1..+3). It tells the two limits apart: if the policy reaches the ideal corner
    with perfect scores but not with RM-V / CM-V, the score models limit it; if not even then, the
    optimiser or the policy does. Not a method to deploy: the oracle is the judge of the evaluation.
    """

    def rollout(self, rows: dict[str, list]) -> Rollout:
        from saferlhfv.data.oracle import judge

        ro = super().rollout(rows)
        rates = [judge(c, r) for c, r in zip(ro.contexts, ro.responses, strict=True)]
        device = ro.end_reward.device
        ro.end_reward = torch.tensor([float(h) for h, _ in rates], device=device)
        ro.end_cost = torch.tensor([-float(s) for _, s in rates], device=device)
        return ro
