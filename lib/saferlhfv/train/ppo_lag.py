r"""Stage 4, Safe RLHF-V: PPO-Lagrangian with the reward model RM-V and the cost model CM-V.

The constrained problem and its Lagrangian (Ji et al., 2025, section 4)::

    max_theta  J_R(theta)   s.t.   J_C(theta) <= d
    min_{lambda >= 0} max_theta  J_R(theta) - lambda * (J_C(theta) - d)

solved by alternating a step on lambda and a PPO step on the policy. One iteration::

    prompts  <- next rollout_batch_size (image, question) pairs
    y        ~ pi_theta(. | image, question)            sampled with the KV cache
    R, C     <- RM-V, CM-V end scores at the last real token of (prompt, y)
    V_r, V_c <- reward / cost critic values per token
    logp, logp_ref per response token (actor at rollout, frozen reference)
    r_t = -beta (logp - logp_ref)_t + [t = last] R          (kl_shaped_rewards)
    c_t = [t = last] C   (+ beta (logp - logp_ref)_t if kl_in_cost)
    lambda step: log lambda += lambda_lr * lambda * (J_C - d)     (Lagrange.update, before the policy)
    A_r, R_r = GAE(r, V_r);  A_c, R_c = GAE(c, V_c)        masks from real response lengths
    for ppo_epochs, minibatches of batch_size:
        actor:   clipped surrogate on A = (A_r - lambda A_c) / (1 + lambda)
        critics: clipped value loss towards R_r, R_c

Six roles: actor (from SFT), frozen reference (SFT), frozen RM-V and CM-V,
reward critic (from RM-V) and cost critic (from CM-V). ``ppo.lambda_mode``
selects the baselines with the same code: ``reward_only`` (lambda = 0) and
``fixed`` (lambda = lambda_init, reward shaping).

Three ways to hold the roles: six fully trained models (the default); six models whose
actor and critics train LoRA adapters (``model.lora.enabled``); or, with ``ppo.shared_base``,
one frozen SFT model carrying five adapters and four heads, the reference being the
model with adapters off (:mod:`saferlhfv.models.shared`; ``python -m saferlhfv.bench
--parts memory`` measures what it saves).

``python -m saferlhfv.train.ppo_lag --preset tiny``; many GPUs::

    accelerate launch --config_file lib/saferlhfv/presets/accelerate/zero2.yaml \
        -m saferlhfv.train.ppo_lag --preset paper
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saferlhfv.algorithms.gae import masked_gae
from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.algorithms.losses import actor_loss, critic_loss, kl_shaped_costs, kl_shaped_rewards, masked_mean
from saferlhfv.config import Config, ConfigError, add_config_arguments, config_from_args
from saferlhfv.io import write_json_atomic
from saferlhfv.models.factory import _seeded, apply_lora, load_saved_vlm, save_vlm
from saferlhfv.models.generation import encode_prompts, media_token_ids
from saferlhfv.models.score import ScoreModel, load_score_model, position_ids_from_mask, score_texts
from saferlhfv.train.loop import METRICS, load_checkpoint, make_accelerator, save_checkpoint

__all__ = [
    "Rollout",
    "token_logprobs",
    "response_mask",
    "make_rollout",
    "PPOLagTrainer",
    "train_ppo_lag",
    "ensure_ppo",
    "budget_sweep",
    "SWEEP_THRESHOLDS",
    "SWEEP_ITERATIONS",
    "main",
]

VISION_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes")


def _model_inputs(input_ids, attention_mask, vision: dict[str, torch.Tensor]) -> dict[str, Any]:
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **vision}
    if "image_grid_thw" not in vision:  # LLaVA: positions count real tokens only (left padding safe)
        inputs["position_ids"] = position_ids_from_mask(attention_mask)
    return inputs


def token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability (and entropy) of each next token under ``model``.

    Returns:
        ``(logp, entropy)``, both ``[B, L-1]``: ``logp[:, t] = log pi(input_ids[:, t+1] | input_ids[:, :t+1])``.
    """
    logits = model(**_model_inputs(input_ids, attention_mask, vision), use_cache=False).logits[:, :-1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def response_mask(generated: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on the real tokens of generated responses: up to and including the first EOS.

    Args:
        generated: ``[B, R]`` the tokens ``generate`` appended after the prompts.

    Returns:
        ``[B, R]`` long mask (tokens after the first EOS are padding).
    """
    is_eos = (generated == eos_token_id).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~after_eos).long()


@dataclass
class Rollout:
    """One batch of experience; every ``[B, L-1]`` tensor is indexed by the *predicted* token.

    Attributes:
        input_ids, attention_mask: ``[B, L]`` prompt (left-padded) + response (right-padded).
        vision: the processor's image tensors for the batch.
        mask: ``[B, L-1]`` 1 where ``input_ids[:, t+1]`` is a real response token.
        old_logp, ref_logp: ``[B, L-1]`` actor and reference log-probs at rollout.
        reward_values, cost_values: ``[B, L-1]`` critic values.
        end_reward, end_cost: ``[B]`` RM-V / CM-V scores at the last real token.
        reward_adv, reward_ret, cost_adv, cost_ret: ``[B, L-1]`` GAE results.
        responses: decoded responses; contexts: the prompts' oracle contexts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    vision: dict[str, torch.Tensor]
    mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    entropy: torch.Tensor
    reward_values: torch.Tensor
    cost_values: torch.Tensor
    end_reward: torch.Tensor
    end_cost: torch.Tensor
    responses: list[str]
    contexts: list[str]
    reward_adv: torch.Tensor | None = None
    reward_ret: torch.Tensor | None = None
    cost_adv: torch.Tensor | None = None
    cost_ret: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> dict[str, Any]:
        """Rows ``index`` of every tensor (vision tensors included), as a dict."""
        rows = {
            k: getattr(self, k)[index]
            for k in (
                "input_ids",
                "attention_mask",
                "mask",
                "old_logp",
                "reward_values",
                "cost_values",
                "reward_adv",
                "reward_ret",
                "cost_adv",
                "cost_ret",
            )
        }
        rows["vision"] = _select_vision(self.vision, index)
        return rows


def _select_vision(vision: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    if "image_grid_thw" in vision:  # Qwen2-VL: patches of all images are concatenated along dim 0
        grid = vision["image_grid_thw"]
        sizes = grid.prod(dim=1).tolist()
        chunks = torch.split(vision["pixel_values"], sizes)
        out = {
            "pixel_values": torch.cat([chunks[i] for i in index.tolist()]),
            "image_grid_thw": grid[index],
        }
        if "mm_token_type_ids" in vision:
            out["mm_token_type_ids"] = vision["mm_token_type_ids"][index]
        return out
    return {k: v[index] for k, v in vision.items()}


@torch.no_grad()
def make_rollout(
    *,
    actor,
    reference,
    reward_model: ScoreModel,
    cost_model: ScoreModel,
    reward_critic: ScoreModel,
    cost_critic: ScoreModel,
    processor,
    rows: dict[str, list],
    cfg: Config,
    seed: int,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample responses for ``rows`` (``image``, ``question``, ``context``) and score them with every role."""
    ppo = cfg.ppo
    device = next(actor.parameters()).device
    prompt = encode_prompts(processor, rows["image"], rows["question"], padding_side="left").to(device)
    vision = {k: prompt[k] for k in VISION_KEYS if k in prompt}
    was_training = actor.training
    actor.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = actor.generate(
            **prompt,
            max_new_tokens=ppo.max_new_tokens,
            do_sample=True,
            temperature=ppo.temperature,
            top_p=ppo.top_p,
            use_cache=True,
            suppress_tokens=media_token_ids(processor),
            synced_gpus=synced_gpus,
        )
    actor.train(was_training)
    P = prompt["input_ids"].shape[1]
    generated = out[:, P:]
    eos = processor.tokenizer.eos_token_id
    real = response_mask(generated, eos)
    attention_mask = torch.cat([prompt["attention_mask"], real], dim=1)
    input_ids = out.masked_fill(attention_mask == 0, processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids[:, 1:])
    mask[:, P - 1 :] = real  # logp[:, t] predicts token t+1: response tokens start at t = P-1

    old_logp, entropy = token_logprobs(actor, input_ids, attention_mask, vision)
    ref_logp, _ = token_logprobs(reference, input_ids, attention_mask, vision)
    inputs = _model_inputs(input_ids, attention_mask, vision)
    inputs.pop("position_ids", None)  # ScoreModel derives positions itself
    end_reward = reward_model(**inputs).end_scores.float()
    end_cost = cost_model(**inputs).end_scores.float()
    reward_values = reward_critic(**inputs).scores[:, :-1].float()
    cost_values = cost_critic(**inputs).scores[:, :-1].float()
    responses = [
        t.strip() for t in processor.batch_decode(generated.masked_fill(real == 0, eos), skip_special_tokens=True)
    ]
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        vision=vision,
        mask=mask,
        old_logp=old_logp,
        ref_logp=ref_logp,
        entropy=entropy,
        reward_values=reward_values,
        cost_values=cost_values,
        end_reward=end_reward,
        end_cost=end_cost,
        responses=responses,
        contexts=list(rows["context"]),
    )


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class PPOLagTrainer:
    """PPO-Lagrangian over the six roles; see the module docstring for one iteration.

    Args:
        cfg: the run's config (``cfg.ppo`` drives everything here).
        sft_dir, reward_dir, cost_dir: artifact folders of the upstream stages.
        out_dir: checkpoints, ``metrics.jsonl`` and the final ``model``.
    """

    def __init__(self, cfg: Config, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, out_dir: str | Path):
        from saferlhfv.data.world import rl_prompts

        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.accelerator = make_accelerator()
        ds = self.accelerator.state.deepspeed_plugin
        self.synced_gpus = ds is not None and ds.zero_stage == 3
        ppo = cfg.ppo
        if ppo.shared_base:
            self._build_shared(sft_dir=Path(sft_dir), reward_dir=Path(reward_dir), cost_dir=Path(cost_dir))
        else:
            self._build_separate(sft_dir=Path(sft_dir), reward_dir=Path(reward_dir), cost_dir=Path(cost_dir))
        self.lagrange = Lagrange.from_config(ppo)
        self.prompts = rl_prompts(cfg.data, "train")
        self.iteration = 0

    def _optimizers(self, params: dict[str, list[torch.nn.Parameter]]) -> list[torch.optim.Optimizer]:
        ppo = self.cfg.ppo
        return [
            torch.optim.AdamW(params["actor"], lr=ppo.learning_rate, weight_decay=ppo.weight_decay),
            torch.optim.AdamW(params["reward_critic"], lr=ppo.critic_learning_rate),
            torch.optim.AdamW(params["cost_critic"], lr=ppo.critic_learning_rate),
        ]

    def _build_separate(self, *, sft_dir: Path, reward_dir: Path, cost_dir: Path) -> None:
        """Six models; with ``model.lora.enabled`` the actor and critics train LoRA adapters."""
        cfg, acc = self.cfg, self.accelerator
        dtype, lora = cfg.model.dtype, cfg.model.lora
        actor, self.processor = load_saved_vlm(sft_dir / "model", dtype=dtype)
        reference = copy.deepcopy(actor)
        reward_model, _ = load_score_model(reward_dir / "model", dtype=dtype)
        cost_model, _ = load_score_model(cost_dir / "model", dtype=dtype)
        reward_critic, cost_critic = copy.deepcopy(reward_model), copy.deepcopy(cost_model)
        if lora.enabled:
            with _seeded(cfg.seed):  # the adapters' random A matrices
                actor = apply_lora(actor, lora)
                for critic in (reward_critic, cost_critic):
                    critic.backbone = apply_lora(critic.backbone, lora)
        self.shared = None
        self.reference = _frozen(reference).to(acc.device)
        self.reward_model = _frozen(reward_model).to(acc.device)
        self.cost_model = _frozen(cost_model).to(acc.device)
        params = {
            name: [p for p in model.parameters() if p.requires_grad]
            for name, model in (("actor", actor), ("reward_critic", reward_critic), ("cost_critic", cost_critic))
        }
        (self.actor, self.reward_critic, self.cost_critic, self.opt_actor, self.opt_rc, self.opt_cc) = acc.prepare(
            actor, reward_critic, cost_critic, *self._optimizers(params)
        )
        self.params = params  # the wrappers prepare adds keep the same parameter tensors

    def _build_shared(self, *, sft_dir: Path, reward_dir: Path, cost_dir: Path) -> None:
        """One frozen SFT model with five LoRA adapters and four heads (:mod:`saferlhfv.models.shared`).

        The model is not wrapped by DDP (the active adapter changes between forwards); under
        several processes the gradients of the role being updated are averaged by hand.
        """
        from saferlhfv.models.shared import TRAINABLE_ROLES, SharedBase

        cfg, acc = self.cfg, self.accelerator
        if not cfg.model.lora.enabled:
            raise ConfigError(
                "ppo.shared_base needs model.lora.enabled=true: RM-V and CM-V must be LoRA adapters on the SFT "
                "model (add --set model.lora.enabled=true, which retrains them as adapters)."
            )
        if acc.state.deepspeed_plugin is not None:
            raise ConfigError(
                "ppo.shared_base does not run under DeepSpeed: it already keeps a single frozen base and small "
                "adapters; launch it with the ddp config (or plain torchrun) instead."
            )
        base, self.processor = load_saved_vlm(sft_dir / "model", dtype=cfg.model.dtype)
        with _seeded(cfg.seed):  # the actor adapter's random A matrices
            shared = SharedBase(
                base, actor_lora=cfg.model.lora, reward_dir=reward_dir / "model", cost_dir=cost_dir / "model"
            ).to(acc.device)
        self.shared = shared
        self.actor, self.reference = shared.policy("actor"), shared.policy(None)
        self.reward_model, self.cost_model = shared.scorer("reward"), shared.scorer("cost")
        self.reward_critic, self.cost_critic = shared.scorer("reward_critic"), shared.scorer("cost_critic")
        self.params = {role: shared.role_parameters(role) for role in TRAINABLE_ROLES}
        self.opt_actor, self.opt_rc, self.opt_cc = acc.prepare(*self._optimizers(self.params))
        acc.register_for_checkpointing(shared.trainable_state())

    # ------------------------------------------------------------------ data

    def _prompt_rows(self, iteration: int) -> dict[str, list]:
        """This process's share of the rollout batch of ``iteration`` (seeded, resumable)."""
        acc, n, batch = self.accelerator, len(self.prompts), self.cfg.ppo.rollout_batch_size
        per_process = max(1, batch // acc.num_processes)
        start = iteration * per_process * acc.num_processes + acc.process_index * per_process
        epoch, offset = divmod(start, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)).tolist()
        order += torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch + 1)).tolist()
        rows = self.prompts.select(order[offset : offset + per_process])
        return {"image": list(rows["image"]), "question": list(rows["question"]), "context": list(rows["context"])}

    # ------------------------------------------------------------------ one iteration

    def _unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def step(self) -> dict[str, Any]:
        """One iteration: rollout, lambda step, GAE, PPO epochs; returns the logged metrics."""
        from saferlhfv.evaluate import judge_samples, summarize

        cfg, ppo, acc = self.cfg, self.cfg.ppo, self.accelerator
        rows = self._prompt_rows(self.iteration)
        ro = make_rollout(
            actor=self._unwrap(self.actor),
            reference=self.reference,
            reward_model=self.reward_model,
            cost_model=self.cost_model,
            reward_critic=self._unwrap(self.reward_critic),
            cost_critic=self._unwrap(self.cost_critic),
            processor=self.processor,
            rows=rows,
            cfg=cfg,
            seed=cfg.seed * 1_000_003 + self.iteration * 101 + acc.process_index,
            synced_gpus=self.synced_gpus,
        )
        # 1. the multiplier first, on this batch's episode costs (pooled over processes)
        lag_stats = self.lagrange.update(ro.end_cost)
        lam = self.lagrange.lambda_
        # 2. per-token rewards / costs and GAE
        rewards = kl_shaped_rewards(
            ro.end_reward, ro.old_logp, ro.ref_logp, ro.mask, ppo.kl_coeff, ppo.clip_range_score
        )
        costs = kl_shaped_costs(
            ro.end_cost, ro.old_logp, ro.ref_logp, ro.mask, ppo.kl_coeff, ppo.clip_range_score, ppo.kl_in_cost
        )
        ro.reward_adv, ro.reward_ret = masked_gae(rewards, ro.reward_values, ro.mask, ppo.gamma, ppo.gae_lambda)
        ro.cost_adv, ro.cost_ret = masked_gae(costs, ro.cost_values, ro.mask, ppo.gamma, ppo.gae_lambda)
        # 3. PPO epochs over minibatches
        stats: dict[str, list[float]] = {}
        n = ro.input_ids.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed + self.iteration)
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, ppo.batch_size):
                mb = ro.select(order[start : start + ppo.batch_size].to(ro.input_ids.device))
                for key, value in self._ppo_minibatch(mb, lam).items():
                    stats.setdefault(key, []).append(value)
        # 4. logging
        kl = masked_mean(ro.old_logp - ro.ref_logp, ro.mask, dim=1)  # per-token KL estimate per response
        lengths = ro.mask.sum(dim=1).float()
        oracle = summarize(judge_samples(ro.contexts, ro.responses))
        record = {
            "iteration": self.iteration + 1,
            "reward": float(acc.reduce(ro.end_reward.mean(), "mean")),
            "cost": float(acc.reduce(ro.end_cost.mean(), "mean")),
            "lambda": lam,
            "cost_window_mean": lag_stats["Jc"],
            "threshold": self.lagrange.threshold,
            "kl": float(kl.mean()),
            "entropy": float(masked_mean(ro.entropy, ro.mask)),
            "response_length": float(lengths.mean()),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "oracle_safety": oracle["safety_rate"],
            "oracle_harmful_safety": oracle["harmful_safety_rate"],
            "oracle_helpfulness": oracle["mean_helpfulness"],
            "degenerate_share": oracle["degenerate_share"],
            "sample": ro.responses[0],
        }
        self.iteration += 1
        return record

    def _ppo_minibatch(self, mb: dict[str, Any], lam: float) -> dict[str, float]:
        ppo = self.cfg.ppo
        logp, _ = token_logprobs(self.actor, mb["input_ids"], mb["attention_mask"], mb["vision"])
        loss_a, a_stats = actor_loss(
            logp, mb["old_logp"], mb["reward_adv"], mb["cost_adv"], lam, mb["mask"], ppo.clip_range_ratio
        )
        self._optimise(loss_a, self.opt_actor, self.params["actor"])
        out = {"actor_loss": loss_a.item(), **a_stats}
        inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"], **mb["vision"]}
        for name, critic, opt, params, old, ret in (
            ("reward", self.reward_critic, self.opt_rc, self.params["reward_critic"], mb["reward_values"],
             mb["reward_ret"]),
            ("cost", self.cost_critic, self.opt_cc, self.params["cost_critic"], mb["cost_values"], mb["cost_ret"]),
        ):  # fmt: skip
            values = critic(**inputs).scores[:, :-1].float()
            loss_c = critic_loss(values, old, ret, mb["mask"], ppo.clip_range_value)
            self._optimise(loss_c, opt, params)
            out[f"{name}_critic_loss"] = loss_c.item()
        return out

    def _optimise(self, loss: torch.Tensor, optimizer, params: list[torch.nn.Parameter]) -> None:
        """Backward, (shared-base, several processes: average the gradients by hand), clip, step, zero."""
        acc = self.accelerator
        acc.backward(loss)
        if self.shared is not None and acc.num_processes > 1:
            for p in params:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = acc.reduce(grad, "mean")
        if self.cfg.ppo.max_grad_norm:
            acc.clip_grad_norm_(params, self.cfg.ppo.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ loop

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "lagrange": self.lagrange.state_dict()}

    def train(self, *, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """Run to ``ppo.iterations`` (resuming from ``checkpoint/``), checkpointing every ``save_every``.

        Args:
            stop_after: return after this many iterations of *this call* (for tests and demos).

        Returns:
            ``iterations``, ``final_lambda``, ``resumed`` and the last iteration's metrics.
        """
        ppo, acc = self.cfg.ppo, self.accelerator
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = load_checkpoint(acc, self.out_dir) if resume else None
        if state is not None:
            self.iteration = state["iteration"]
            self.lagrange.load_state_dict(state["lagrange"])
            if acc.is_main_process and (self.out_dir / METRICS).is_file():
                lines = (self.out_dir / METRICS).read_text().splitlines()
                keep = [ln for ln in lines if ln and json.loads(ln)["iteration"] <= self.iteration]
                (self.out_dir / METRICS).write_text("".join(ln + "\n" for ln in keep))
        elif acc.is_main_process:
            (self.out_dir / METRICS).unlink(missing_ok=True)
        bar = tqdm(total=ppo.iterations, initial=self.iteration, desc=f"ppo ({ppo.lambda_mode})",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)  # fmt: skip
        record: dict[str, Any] = {}
        done_here = 0
        while self.iteration < ppo.iterations and (stop_after is None or done_here < stop_after):
            record = self.step()
            done_here += 1
            self._log(record)
            bar.update(1)
            bar.set_postfix(R=f"{record['reward']:.2f}", C=f"{record['cost']:.2f}", lam=f"{record['lambda']:.2f}")
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
        params = [p.detach().float() for p in self.params["actor"]]
        fingerprint = torch.stack([torch.tensor(self.lagrange.lambda_, dtype=torch.float64)] + [
            (p * torch.linspace(0.5, 1.5, p.numel(), device=p.device).view_as(p)).sum().double().cpu() for p in params
        ]).to(acc.device)  # fmt: skip
        gathered = acc.gather(fingerprint.unsqueeze(0))
        return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-8))

    def save_policy(self, path: str | Path) -> None:
        """Save the actor (safetensors + processor) atomically, from the main process.

        A LoRA actor (shared-base mode included) is saved with its adapter merged: a plain model.
        """
        if self.accelerator.is_main_process:
            if self.shared is not None:
                self.shared.activate("actor")
                save_vlm(self.shared.peft, self.processor, path)
            else:
                save_vlm(self._unwrap(self.actor), self.processor, path)
        self.accelerator.wait_for_everyone()


def train_ppo_lag(
    cfg: Config, out_dir: str | Path, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, resume: bool = True
) -> dict[str, Any]:
    """Train the aligned policy into ``out_dir/model`` and evaluate it against the precursor.

    Returns:
        ``safety_rate`` (oracle, evaluation prompts), ``harmful_safety_rate``, ``benign_helpfulness``,
        ``helpful_winrate`` / ``harmless_winrate`` vs the precursor, ``mean_cost`` (CM-V on the
        evaluation answers), ``mean_reward``, ``final_lambda``, ``threshold``, ``lambda_mode``,
        ``precursor`` (the same numbers for the SFT policy), ``seconds``.
    """
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import evaluate_policy, win_rates

    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = PPOLagTrainer(cfg, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, out_dir=out_dir)
    result = trainer.train(resume=resume)
    trainer.save_policy(out_dir / "model")
    prompts = rl_prompts(cfg.data, "evaluation")
    policy = trainer._unwrap(trainer.actor)
    kwargs = dict(max_new_tokens=cfg.ppo.max_new_tokens, seed=cfg.seed + 17, return_samples=True)
    summary, samples = evaluate_policy(policy, trainer.processor, prompts, **kwargs)
    ref_summary, ref_samples = evaluate_policy(trainer.reference, trainer.processor, prompts, **kwargs)
    scores = _score_samples(trainer, prompts, samples)
    write_json_atomic(out_dir / "eval_samples.json", {"policy": samples, "precursor": ref_samples})
    return {
        "lambda_mode": cfg.ppo.lambda_mode,
        "iterations": result["iterations"],
        "processes": result["processes"],
        "ranks_agree": result["ranks_agree"],
        "safety_rate": summary["safety_rate"],
        "harmful_safety_rate": summary["harmful_safety_rate"],
        "benign_helpfulness": summary["benign_helpfulness"],
        "mean_helpfulness": summary["mean_helpfulness"],
        "degenerate_share": summary["degenerate_share"],
        **win_rates(samples, ref_samples),
        "mean_reward": scores["reward"],
        "mean_cost": scores["cost"],
        "final_lambda": round(result["final_lambda"], 4),
        "threshold": cfg.ppo.threshold,
        "per_category_safety": summary["per_category_safety"],
        "precursor": {k: ref_summary[k] for k in ("safety_rate", "harmful_safety_rate", "benign_helpfulness")},
        "seconds": round(time.perf_counter() - start, 2),
    }


def _score_samples(trainer: PPOLagTrainer, prompts, samples: list[dict[str, Any]]) -> dict[str, float]:
    """Mean RM-V and CM-V scores of evaluation answers."""
    args = (
        [prompts[s["index"]]["image"] for s in samples],
        [s["question"] for s in samples],
        [s["response"] for s in samples],
    )
    rewards = score_texts(trainer.reward_model, trainer.processor, *args)
    costs = score_texts(trainer.cost_model, trainer.processor, *args)
    return {"reward": round(sum(rewards) / len(rewards), 4), "cost": round(sum(costs) / len(costs), 4)}


def ensure_ppo(cfg: Config) -> tuple[Path, dict[str, Any]]:
    """The PPO artifact for ``cfg`` (training SFT, RM-V and CM-V first if they are not cached)."""
    from saferlhfv.artifacts import ensure_artifact
    from saferlhfv.train.preference import ensure_preference_model
    from saferlhfv.train.sft import ensure_sft

    sft_dir, _ = ensure_sft(cfg)
    reward_dir, _ = ensure_preference_model(cfg, "reward")
    cost_dir, _ = ensure_preference_model(cfg, "cost")
    return ensure_artifact(
        cfg,
        "ppo",
        lambda folder: train_ppo_lag(cfg, folder, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir),
    )


#: the budgets of the tiny preset's sweep (notebooks 04 and 05 share these cached runs), on CM-V's
#: scale: oracle-safe answers cost about -5, unsafe ones about +3 (``python -m saferlhfv.evaluate``).
SWEEP_THRESHOLDS = (-4.5, -3.0, -1.5)
#: PPO iterations per sweep run (shorter than the main run, to keep the sweep to minutes on a CPU).
SWEEP_ITERATIONS = 25


def budget_sweep(
    cfg: Config,
    thresholds=SWEEP_THRESHOLDS,
    *,
    iterations: int | None = SWEEP_ITERATIONS,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """PPO-Lagrangian once per budget ``d`` in ``thresholds`` (each a cached artifact).

    Args:
        iterations: PPO iterations per run (None keeps ``cfg.ppo.iterations``).
        overrides: extra config fields for every run.

    Returns:
        One metrics dict (as :func:`train_ppo_lag` returns) per threshold, with ``folder`` added.
    """
    from saferlhfv.config import apply_overrides

    results = []
    for d in thresholds:
        fields = {**(overrides or {}), "ppo.threshold": float(d), "ppo.lambda_mode": "lagrange"}
        if iterations is not None:
            fields["ppo.iterations"] = iterations
        run_cfg = apply_overrides(cfg, fields)
        folder, metrics = ensure_ppo(run_cfg)
        results.append({**metrics, "folder": str(folder)})
    return results


def _upstream_dirs(cfg: Config, *, train_missing: bool) -> dict[str, Path]:
    """Artifact folders of SFT, RM-V and CM-V; trains missing ones only in a single process."""
    from saferlhfv.artifacts import RESULT, artifact_dir
    from saferlhfv.train.preference import ensure_preference_model
    from saferlhfv.train.sft import ensure_sft

    if train_missing:
        return {
            "sft_dir": ensure_sft(cfg)[0],
            "reward_dir": ensure_preference_model(cfg, "reward")[0],
            "cost_dir": ensure_preference_model(cfg, "cost")[0],
        }
    dirs = {f"{s}_dir": artifact_dir(cfg, s) for s in ("sft", "reward", "cost")}
    missing = [str(d) for d in dirs.values() if not (d / RESULT).is_file()]
    if missing:
        raise SystemExit(
            "PPO under several processes needs the SFT, RM-V and CM-V artifacts first (missing: "
            + ", ".join(missing)
            + f"). Train them once in a single process: python -m saferlhfv.pipeline --preset {cfg.preset} "
            "--stages sft reward cost (with the same --set overrides)."
        )
    return dirs


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from saferlhfv.artifacts import RESULT, artifact_dir

    parser = argparse.ArgumentParser(prog="python -m saferlhfv.train.ppo_lag", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: the artifact cache)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        if state.num_processes == 1 and not args.out:
            folder, metrics = ensure_ppo(cfg)
        else:
            dirs = _upstream_dirs(cfg, train_missing=state.num_processes == 1)
            folder = Path(args.out) if args.out else artifact_dir(cfg, "ppo")
            metrics = train_ppo_lag(cfg, folder, **dirs)
            if state.is_main_process:
                write_json_atomic(folder / RESULT, metrics)
        if state.is_main_process:
            print(json.dumps({k: v for k, v in metrics.items() if k != "per_category_safety"}, indent=2))
            print(f"artifact: {folder}")
    finally:
        # gloo process groups can abort at exit unless they are torn down explicitly
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            state.wait_for_everyone()
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
