r"""Shared-base mode: PPO's six roles as LoRA adapters (plus heads) on one frozen VLM.

Separately, the six roles of Safe RLHF-V's PPO (actor, reference, RM-V, CM-V, reward critic,
cost critic) are six copies of the model. Here they are one frozen copy of the SFT precursor
and five peft LoRA adapters, only one of them active at a time::

    role            adapter            head                 trains
    actor           "actor" (new, B=0) LM head of the base  yes
    reference       none (adapters off) LM head of the base no
    reward (RM-V)   RM-V's adapter     RM-V's head          no
    cost (CM-V)     CM-V's adapter     CM-V's head          no
    reward_critic   copy of RM-V's     copy of RM-V's head  yes
    cost_critic     copy of CM-V's     copy of CM-V's head  yes

RM-V and CM-V must have been trained as LoRA adapters on this same SFT model
(``model.lora.enabled``: :func:`saferlhfv.models.score.save_score_model` stores the adapter in
``adapter/``). The new actor adapter starts with ``B = 0``, so at iteration 0 the actor *is*
the reference, exactly as when the actor is initialised from the SFT weights.

Each role is a view (:meth:`SharedBase.policy`, :meth:`SharedBase.scorer`) with the interface
of the separate model it replaces (``generate`` / ``forward`` for policies, a
:class:`~saferlhfv.models.score.ScoreModel` for scorers); a view activates its adapter before
every call. Dropout stays off in every role (the module is kept in eval mode), so a role gives
the same log-probabilities at rollout and at update time.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from saferlhfv.config import LoraConfig
from saferlhfv.models.factory import apply_lora
from saferlhfv.models.score import ADAPTER_DIR, HEAD_FILE, ScoreModel

__all__ = ["ROLES", "TRAINABLE_ROLES", "SharedBase", "PolicyView", "AdapterScoreModel"]

#: the adapter-carrying roles (the reference is the base with adapters off).
ROLES = ("actor", "reward", "cost", "reward_critic", "cost_critic")
#: the roles PPO updates.
TRAINABLE_ROLES = ("actor", "reward_critic", "cost_critic")


class SharedBase(nn.Module):
    """One frozen VLM carrying the adapters and heads of every PPO role.

    Args:
        base: the SFT precursor (a plain model; it is wrapped by peft in place and frozen).
        actor_lora: rank, alpha and target modules of the new actor adapter.
        reward_dir, cost_dir: saved RM-V / CM-V folders (``.../model``) holding ``adapter/`` and the head.
        critics: also load the two critics (copies of RM-V's / CM-V's adapter and head); False for
            critic-free methods (GRPO).
    """

    def __init__(
        self, base: PreTrainedModel, *, actor_lora: LoraConfig, reward_dir: Path, cost_dir: Path, critics: bool = True
    ):
        super().__init__()
        self.peft = apply_lora(base, actor_lora, adapter_name="actor")
        hidden = getattr(base.config, "text_config", base.config).hidden_size
        dtype = next(base.parameters()).dtype
        heads = {}
        for kind, folder in (("reward", Path(reward_dir)), ("cost", Path(cost_dir))):
            adapter = folder / ADAPTER_DIR
            if not (adapter / "adapter_config.json").is_file():
                raise FileNotFoundError(
                    f"{folder} holds no LoRA adapter ({ADAPTER_DIR}/adapter_config.json): the shared-base mode "
                    "needs RM-V and CM-V trained as LoRA adapters on the SFT model. Train them with "
                    "--set model.lora.enabled=true (the same overrides as this run)."
                )
            head_state = load_file(folder / HEAD_FILE)
            for role, trainable in ((kind, False), (f"{kind}_critic", True))[: 2 if critics else 1]:
                self.peft.load_adapter(str(adapter), adapter_name=role, is_trainable=trainable)
                head = nn.Linear(hidden, 1).to(dtype)
                head.load_state_dict(head_state)
                head.requires_grad_(trainable)
                heads[role] = head
        self.heads = nn.ModuleDict(heads)
        self.active: str | None = None
        self.activate("actor")
        self.eval()

    def train(self, mode: bool = True) -> SharedBase:
        """Stays in eval mode whatever ``mode`` says: dropout is off in every role (module docstring)."""
        return super().train(False)

    def activate(self, role: str) -> None:
        """Make ``role``'s adapter the active one (its weights trainable only if the role trains)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {ROLES}")
        if role != self.active:
            self.peft.set_adapter(role, inference_mode=role not in TRAINABLE_ROLES)
            self.active = role

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        """The parameters that belong to ``role`` alone: its adapter's LoRA matrices and its head."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {ROLES}")
        params = [p for n, p in self.peft.named_parameters() if "lora_" in n and f".{role}." in n]
        if role in self.heads:
            params += list(self.heads[role].parameters())
        return params

    def policy(self, role: str | None) -> PolicyView:
        """The actor (``role="actor"``) or the reference (``role=None``: every adapter off)."""
        return PolicyView(self, role)

    def scorer(self, role: str) -> AdapterScoreModel:
        """RM-V, CM-V or a critic as a :class:`~saferlhfv.models.score.ScoreModel`."""
        return AdapterScoreModel(self, role)

    def trainable_state(self) -> _TrainableState:
        """What a checkpoint must hold (the trainable adapters and heads), for ``register_for_checkpointing``."""
        return _TrainableState(self)


class PolicyView(nn.Module):
    """A causal VLM view of :class:`SharedBase`: the actor's adapter, or none (the reference)."""

    def __init__(self, shared: SharedBase, role: str | None):
        super().__init__()
        self.shared = shared
        self.role = role
        self.eval()

    def train(self, mode: bool = True) -> PolicyView:
        """Stays in eval mode (dropout off), like the shared base."""
        return super().train(False)

    @contextmanager
    def _active(self):
        if self.role is None:
            with self.shared.peft.disable_adapter():
                yield
        else:
            self.shared.activate(self.role)
            yield

    @property
    def device(self) -> torch.device:
        return next(self.shared.parameters()).device

    @property
    def config(self):
        return self.shared.peft.get_base_model().config

    def forward(self, **inputs):
        """The base model's forward (logits) with this role's adapter."""
        with self._active():
            return self.shared.peft(**inputs)

    def generate(self, **kwargs):
        """``generate`` with this role's adapter (KV cache included)."""
        with self._active():
            return self.shared.peft.generate(**kwargs)


class AdapterScoreModel(ScoreModel):
    """A :class:`~saferlhfv.models.score.ScoreModel` whose backbone is the shared base with ``role``'s adapter."""

    def __init__(self, shared: SharedBase, role: str):
        super().__init__(shared.peft, head=shared.heads[role])
        self.role = role
        self._activate = shared.activate
        self.eval()

    def train(self, mode: bool = True) -> AdapterScoreModel:
        """Stays in eval mode (dropout off), like the shared base."""
        return super().train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **vision_inputs):
        self._activate(self.role)
        return super().forward(input_ids, attention_mask, **vision_inputs)


class _TrainableState:
    """The trainable adapters and heads of a :class:`SharedBase` as a state dict (not the frozen base)."""

    def __init__(self, shared: SharedBase):
        self.shared = shared

    def _names(self) -> set[str]:
        ids = {id(p) for role in TRAINABLE_ROLES for p in self.shared.role_parameters(role)}
        return {n for n, p in self.shared.named_parameters() if id(p) in ids}

    def state_dict(self) -> dict[str, torch.Tensor]:
        names = self._names()
        return {n: p.detach().clone() for n, p in self.shared.named_parameters() if n in names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.shared.named_parameters())
        missing = self._names() - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
