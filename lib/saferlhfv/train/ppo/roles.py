r"""The six roles of PPO-Lagrangian, held in one of two layouts with one interface.

==============  ==================================  =====================================
role            :class:`SeparateRoles`              :class:`SharedRoles`
==============  ==================================  =====================================
actor           copy of the SFT model (trains;      LoRA adapter "actor" on the frozen
                LoRA adapters with                  SFT model
                ``model.lora.enabled``)
reference       frozen copy of the SFT model        the same model, adapters off
RM-V, CM-V      frozen score models (trainable      their adapters + heads
                with ``ppo.online_labels``)
reward critic   copy of RM-V (trains)               copy of RM-V's adapter + head
cost critic     copy of CM-V (trains)               copy of CM-V's adapter + head
==============  ==================================  =====================================

Both expose the same attributes: ``processor``, the six roles (``actor``, ``reference``,
``reward_model``, ``cost_model``, ``reward_critic``, ``cost_critic``; the trainable ones as
``accelerate`` prepared them), ``params`` (role -> its trainable parameters), the three
optimisers (``opt_actor``, ``opt_reward_critic``, ``opt_cost_critic``; with ``ppo.online_labels``
also ``opt_reward_model`` and ``opt_cost_model``, six models only) and the methods
:meth:`Roles.unwrap`, :meth:`Roles.reduce_gradients` and :meth:`Roles.save_policy`.
The trainer (:mod:`saferlhfv.train.ppo.trainer`) never asks which layout it has.

Critic-free methods (``grpo_lag``) build the roles with ``critics=False``: four roles, the two
critics (and their optimisers) are ``None`` and take no memory.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from saferlhfv.config import Config, ConfigError
from saferlhfv.models.factory import _seeded, apply_lora, load_saved_vlm, prepare_for_training, save_vlm
from saferlhfv.models.score import load_score_model

__all__ = ["Roles", "SeparateRoles", "SharedRoles", "build_roles"]


def _prepare(accelerator, *objects) -> tuple:
    """``accelerator.prepare`` that always returns a tuple (it returns a lone object as it is)."""
    prepared = accelerator.prepare(*objects)
    return prepared if len(objects) > 1 else (prepared,)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


#: the two critic roles (absent in critic-free methods).
CRITICS = ("reward_critic", "cost_critic")


class Roles:
    """What both layouts share: optimisers, unwrapping, gradient reduction, saving the policy.

    Args:
        cfg: the run's config (``cfg.ppo`` and ``cfg.model``).
        accelerator: the run's ``accelerate.Accelerator``.
        sft_dir, reward_dir, cost_dir: artifact folders of the upstream stages.
        critics: build the reward and cost critics (False: they are ``None``).
    """

    #: trainable role -> attribute of its optimiser.
    OPTIMIZERS = {
        "actor": "opt_actor",
        "reward_critic": "opt_reward_critic",
        "cost_critic": "opt_cost_critic",
        "reward_model": "opt_reward_model",
        "cost_model": "opt_cost_model",
    }

    def __init__(
        self, cfg: Config, accelerator, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, critics: bool = True
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.critics = critics
        self.reward_critic = self.cost_critic = None
        self.opt_reward_critic = self.opt_cost_critic = None
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        self.build(sft_dir=Path(sft_dir), reward_dir=Path(reward_dir), cost_dir=Path(cost_dir))
        self.make_schedulers()

    def build(self, *, sft_dir: Path, reward_dir: Path, cost_dir: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _optimizers(self, params: dict[str, list[torch.nn.Parameter]]) -> list[torch.optim.Optimizer]:
        """AdamW of the actor, then (with critics) of the reward and the cost critic: betas (0.9, ``adam_beta2``);
        weight decay ``ppo.weight_decay`` for the actor and none for the critics, as the reference
        (AdamW's default would be 0.01)."""
        ppo = self.cfg.ppo
        betas = (0.9, ppo.adam_beta2)
        opts = [torch.optim.AdamW(params["actor"], lr=ppo.learning_rate, weight_decay=ppo.weight_decay, betas=betas)]
        if self.critics:
            opts += [
                torch.optim.AdamW(params[n], lr=ppo.critic_learning_rate, weight_decay=0.0, betas=betas)
                for n in CRITICS
            ]
        return opts

    def make_schedulers(self) -> None:
        """Learning-rate schedules of the actor and the critics (``ppo.lr_scheduler``, ``ppo.lr_warmup_ratio``).

        One optimiser step per minibatch: ``iterations * ppo_epochs * ceil(rows / batch_size)`` steps in a
        run, ``rows`` being this process's share of ``rollout_batch_size`` (fewer steps when ``target_kl``
        stops epochs early). A constant rate without warm-up needs no scheduler (none is made); the
        others are saved in checkpoints.
        """
        ppo = self.cfg.ppo
        k = ppo.samples_per_prompt
        rows = max(1, ppo.rollout_batch_size // self.accelerator.num_processes // k) * k  # as the trainer splits
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        if ppo.lr_scheduler not in ("constant", "cosine"):
            raise ConfigError(f"ppo.lr_scheduler must be 'constant' or 'cosine', got {ppo.lr_scheduler!r}")
        if ppo.lr_scheduler == "constant" and not ppo.lr_warmup_ratio:
            return
        from transformers import get_scheduler

        total = ppo.iterations * ppo.ppo_epochs * -(-rows // ppo.batch_size)
        name = "cosine" if ppo.lr_scheduler == "cosine" else "constant_with_warmup"
        for role in ("actor", *(CRITICS if self.critics else ())):
            opt = self.optimizer(role)
            self.schedulers[role] = get_scheduler(
                name,
                getattr(opt, "optimizer", opt),  # the torch optimiser under accelerate's wrapper
                num_warmup_steps=int(ppo.lr_warmup_ratio * total),
                num_training_steps=total,
            )
        self.accelerator.register_for_checkpointing(*self.schedulers.values())

    def step(self, role: str) -> None:
        """The optimiser step of ``role``, then its learning-rate schedule's."""
        self.optimizer(role).step()
        if role in self.schedulers:
            self.schedulers[role].step()

    def optimizer(self, role: str) -> torch.optim.Optimizer:
        """The optimiser of a trainable role (a key of :attr:`OPTIMIZERS`)."""
        return getattr(self, self.OPTIMIZERS[role])

    def unwrap(self, model):
        """The plain module under ``accelerate``'s wrappers (``None`` for a role that is not built)."""
        return None if model is None else self.accelerator.unwrap_model(model)

    def models(self) -> list[torch.nn.Module]:
        """The roles that exist (six, or four without critics), unwrapped, in the module docstring's order."""
        return [self.unwrap(m) for m in (self.actor, self.reference, self.reward_model, self.cost_model,
                                         self.reward_critic, self.cost_critic) if m is not None]  # fmt: skip

    def before_backward(self, role: str) -> None:
        """Make ``role``'s weights trainable for the backward pass about to run (a key of :attr:`OPTIMIZERS`):
        nothing to do here, each role is its own model."""

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients across processes where nothing else does (DDP already does it): no-op here."""

    def save_policy(self, path: str | Path) -> None:
        """Save the actor (safetensors + processor) atomically, from the main process."""
        if self.accelerator.is_main_process:
            save_vlm(self.unwrap(self.actor), self.processor, path)
        self.accelerator.wait_for_everyone()


class SeparateRoles(Roles):
    """Six models; with ``model.lora.enabled`` the actor and critics train LoRA adapters."""

    def build(self, *, sft_dir: Path, reward_dir: Path, cost_dir: Path) -> None:
        cfg, acc = self.cfg, self.accelerator
        dtype, lora = cfg.model.dtype, cfg.model.lora
        if acc.state.deepspeed_plugin is not None and (self.critics or cfg.ppo.online_labels):
            # accelerate prepares one model per Accelerator under DeepSpeed; several trainable roles would
            # need one engine each, which this trainer does not build (yet)
            raise ConfigError(
                "PPO trains several models at once (the actor and two critics) and accelerate prepares only "
                "one model under DeepSpeed: launch PPO with lib/saferlhfv/presets/accelerate/ddp.yaml instead. "
                "For a 7B model on 80 GB GPUs add --set model.lora.enabled=true --set ppo.shared_base=true "
                "(python -m saferlhfv.bench --plan paper: 27 GiB on one GPU, 18 GiB each on 8). SFT, RM-V, CM-V "
                "and the guard do run under DeepSpeed."
            )
        actor, self.processor = load_saved_vlm(sft_dir / "model", dtype=dtype)
        reference = copy.deepcopy(actor)
        reward_model, _ = load_score_model(reward_dir / "model", dtype=dtype)
        cost_model, _ = load_score_model(cost_dir / "model", dtype=dtype)
        critics = [copy.deepcopy(reward_model), copy.deepcopy(cost_model)] if self.critics else []
        if lora.enabled:
            with _seeded(cfg.seed):  # the adapters' random A matrices
                actor = apply_lora(actor, lora)
                for critic in critics:
                    critic.backbone = apply_lora(critic.backbone, lora)
        self.reference = _frozen(reference).to(acc.device)
        if cfg.ppo.online_labels:  # RM-V and CM-V keep learning from the annotators' labels of the policy's answers
            self._trainable_scorers(reward_model, cost_model)
        else:
            self.reward_model = _frozen(reward_model).to(acc.device)
            self.cost_model = _frozen(cost_model).to(acc.device)
        for model in (actor, *(critic.backbone for critic in critics)):  # model.freeze_vision_tower or ppo's own
            prepare_for_training(model, cfg.model, freeze_vision=cfg.ppo.freeze_vision_tower)
        trainable = dict(zip(("actor", "reward_critic", "cost_critic"), [actor, *critics], strict=False))
        params = {name: [p for p in model.parameters() if p.requires_grad] for name, model in trainable.items()}
        prepared = _prepare(acc, *trainable.values(), *self._optimizers(params))
        n = len(trainable)
        for name, model, opt in zip(trainable, prepared[:n], prepared[n:], strict=True):
            setattr(self, name, model)
            setattr(self, self.OPTIMIZERS[name], opt)
        self.params.update(params)  # the wrappers prepare adds keep the same parameter tensors

    def _trainable_scorers(self, reward_model, cost_model) -> None:
        """RM-V and CM-V in eval mode (no dropout) but trainable, each with its AdamW (no weight decay)."""
        lr = self.cfg.ppo.online_label_learning_rate
        params = {}
        for name, model in (("reward_model", reward_model), ("cost_model", cost_model)):
            model.eval()
            params[name] = [p for p in model.parameters() if p.requires_grad]
        opts = [torch.optim.AdamW(params[n], lr=lr, weight_decay=0.0) for n in ("reward_model", "cost_model")]
        self.reward_model, self.cost_model, self.opt_reward_model, self.opt_cost_model = self.accelerator.prepare(
            reward_model, cost_model, *opts
        )
        self.params.update(params)


class SharedRoles(Roles):
    """One frozen SFT model with five LoRA adapters and four heads (:mod:`saferlhfv.models.shared`).

    The model is not wrapped by DDP (the active adapter changes between forwards); under
    several processes :meth:`reduce_gradients` averages the gradients of the role being updated.
    """

    def build(self, *, sft_dir: Path, reward_dir: Path, cost_dir: Path) -> None:
        from saferlhfv.models.shared import TRAINABLE_ROLES, SharedBase

        cfg, acc = self.cfg, self.accelerator
        if cfg.ppo.online_labels:
            raise ConfigError(
                "ppo.online_labels trains RM-V and CM-V, which ppo.shared_base keeps frozen: use one or the other"
            )
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
        base = prepare_for_training(base, cfg.model)  # the base is frozen; this sets gradient checkpointing
        with _seeded(cfg.seed):  # the actor adapter's random A matrices
            shared = SharedBase(
                base,
                actor_lora=cfg.model.lora,
                reward_dir=reward_dir / "model",
                cost_dir=cost_dir / "model",
                critics=self.critics,
            ).to(acc.device)
        self.shared = shared
        self.actor, self.reference = shared.policy("actor"), shared.policy(None)
        self.reward_model, self.cost_model = shared.scorer("reward"), shared.scorer("cost")
        roles = TRAINABLE_ROLES if self.critics else ("actor",)
        if self.critics:
            self.reward_critic, self.cost_critic = shared.scorer("reward_critic"), shared.scorer("cost_critic")
        self.params.update({role: shared.role_parameters(role) for role in roles})
        for role, opt in zip(roles, _prepare(acc, *self._optimizers(self.params)), strict=True):
            setattr(self, self.OPTIMIZERS[role], opt)
        acc.register_for_checkpointing(shared.trainable_state())

    def before_backward(self, role: str) -> None:
        """Activate ``role``'s adapter: peft leaves only the active adapter's weights requiring gradients, and
        autograd skips a weight that does not require one *when the backward runs*, so a graph built while
        the role was active would train nothing once another role was activated since (fused critics build
        both critics' graphs before either backward)."""
        from saferlhfv.models.shared import TRAINABLE_ROLES

        if role in TRAINABLE_ROLES:
            self.shared.activate(role)

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` across processes by hand (no DDP wrapper here)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            for p in params:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = acc.reduce(grad, "mean")

    def save_policy(self, path: str | Path) -> None:
        """Save the actor with its adapter merged (a plain model), from the main process."""
        if self.accelerator.is_main_process:
            self.shared.activate("actor")
            save_vlm(self.shared.peft, self.processor, path)
        self.accelerator.wait_for_everyone()


def build_roles(
    cfg: Config, accelerator, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, critics: bool = True
) -> Roles:
    """:class:`SharedRoles` when ``ppo.shared_base``, else :class:`SeparateRoles` (``critics``: see :class:`Roles`)."""
    cls = SharedRoles if cfg.ppo.shared_base else SeparateRoles
    return cls(cfg, accelerator, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, critics=critics)
