"""Non-finite guards: the first NaN / inf stops training, naming stage, step, quantity and the last
good checkpoint, which stays as it was on disk."""

import hashlib
import math
from pathlib import Path

import pytest
import torch

from saferlhfv.algorithms.lagrange import Lagrange, PIDLagrange
from saferlhfv.config import TrainConfig
from saferlhfv.finite import NonFiniteError, check_finite
from saferlhfv.train.loop import Trainer
from tests.test_train_loop import _collate, _data, _loss, _model


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_check_finite_passes_finite_values_and_names_everything():
    check_finite("loss", 1.5, stage="s", step=1)
    check_finite("loss", torch.tensor([1.0, 2.0]), stage="s", step=1)
    check_finite("cost", [0.0, -3.0], stage="s", step=1)
    check_finite("tokens", torch.tensor([1, 2]), stage="s", step=1)  # integers are always finite
    with pytest.raises(NonFiniteError, match=r"non-finite advantages = inf \(element 2\) in stage 'ppo' at step 7"):
        check_finite("advantages", torch.tensor([0.0, 1.0, math.inf]), stage="ppo", step=7, checkpoint="/nowhere")
    with pytest.raises(NonFiniteError, match="no checkpoint yet") as err:
        check_finite("lambda", math.nan, stage="ppo", step=1, checkpoint="/nowhere")
    assert (err.value.stage, err.value.step, err.value.quantity, err.value.checkpoint) == ("ppo", 1, "lambda", None)
    assert isinstance(err.value, RuntimeError)


CFG = TrainConfig(learning_rate=0.3, epochs=3, batch_size=8, warmup_ratio=0.0, save_every=4, eval_every=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_loop_stops_on_a_non_finite_loss_and_keeps_the_checkpoint(tmp_path, bad):
    """SFT, RM-V, CM-V, the guard and the monitor all train through this loop."""
    calls, saved = {"n": 0}, {}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the checkpoint of step 4 is on disk
            saved.update(snapshot(tmp_path / "checkpoint"))
        if calls["n"] == 6:
            loss, stats = _loss(model, batch)
            return loss * bad, stats
        return _loss(model, batch)

    trainer = Trainer(model=_model(), dataset=_data(), collate_fn=_collate, loss_fn=loss_fn, cfg=CFG,
                      out_dir=tmp_path, desc="rm-v")  # fmt: skip
    weights = trainer.accelerator.unwrap_model(trainer.model).weight
    with pytest.raises(NonFiniteError) as err:
        trainer.train()
    message = str(err.value)
    assert "'rm-v'" in message and "step 6" in message and "loss" in message
    assert str(tmp_path / "checkpoint") in message and "intact" in message
    assert (err.value.stage, err.value.step, err.value.quantity) == ("rm-v", 6, "loss")
    assert saved and snapshot(tmp_path / "checkpoint") == saved
    assert torch.isfinite(weights).all()  # the NaN never reached the optimiser


def test_loop_without_a_checkpoint_says_so(tmp_path):
    def loss_fn(model, batch):
        loss, stats = _loss(model, batch)
        return loss * math.nan, stats

    trainer = Trainer(model=_model(), dataset=_data(), collate_fn=_collate, loss_fn=loss_fn, cfg=CFG,
                      out_dir=tmp_path, desc="sft")  # fmt: skip
    with pytest.raises(NonFiniteError, match="'sft' at step 1.*no checkpoint yet"):
        trainer.train()
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize(
    "make", [lambda: Lagrange(1.0, 0.1, 20.0, threshold=0.0), lambda: PIDLagrange(1.0, kp=0.1, ki=0.1)]
)
@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_lagrange_refuses_a_non_finite_cost_before_it_reaches_log_lambda(make, bad):
    lag = make()
    lag.update([0.5, 1.0])
    before = lag.state_dict()
    with pytest.raises(NonFiniteError, match=r"episode cost.*step 2") as err:
        lag.update(torch.tensor([0.3, bad]))
    assert err.value.quantity == "episode cost"
    assert lag.state_dict() == before and math.isfinite(lag.lambda_)  # window, count and lambda untouched


# ---------------------------------------------------------------------------------------------- PPO
# A PPO trainer whose rollouts are made up (no models: the hooks are stubbed), run through the real
# step(), train() loop and checkpoints; one quantity at a time is made non-finite at iteration 2.

B, T = 4, 5


def _rollout(reward: float = 1.0, cost: float = -1.0):
    from saferlhfv.train.ppo.rollout import Rollout

    zeros = torch.zeros(B, T)
    return Rollout(input_ids=torch.zeros(B, T + 1, dtype=torch.long), attention_mask=torch.ones(B, T + 1),
                   vision={}, mask=torch.ones(B, T), old_logp=zeros - 1, ref_logp=zeros - 1, entropy=zeros,
                   reward_values=zeros, cost_values=zeros, end_reward=torch.full((B,), reward),
                   end_cost=torch.full((B,), cost), responses=["a"] * B, contexts=["{}"] * B)  # fmt: skip


def _stub_trainer(out_dir: Path, algorithm: str = "ppo_lag"):
    from saferlhfv.config import load_config
    from saferlhfv.train.loop import make_accelerator
    from saferlhfv.train.ppo.trainer import algorithm_class

    cfg = load_config("tiny", overrides=["ppo.iterations=3", "ppo.save_every=1", f"ppo.algorithm={algorithm}"])
    t = algorithm_class(algorithm).__new__(algorithm_class(algorithm))
    t.cfg, t.seed, t.out_dir, t.iteration = cfg, 0, out_dir, 0
    t.accelerator = make_accelerator()
    t.lagrange = t.make_multiplier()
    t._prompt_rows = lambda iteration: {}
    t.rollout = lambda rows: _rollout()
    t.update = lambda ro: {"actor_loss": 0.0}
    t.refresh_score_models = lambda ro: {}
    t.metrics = lambda ro, lag, stats: {"iteration": t.iteration + 1, "reward": float(ro.end_reward.mean()),
                                        "cost": float(ro.end_cost.mean()), "lambda": t.lagrange.lambda_}  # fmt: skip
    return t


def _nan_at_iteration_2(t, quantity: str) -> None:
    """Make ``quantity`` NaN in the second iteration (0-based ``t.iteration == 1``) of stub trainer ``t``."""
    later = lambda: t.iteration == 1  # noqa: E731
    if quantity in ("reward", "cost"):
        t.rollout = lambda rows: _rollout(**{quantity: math.nan}) if later() else _rollout()
    elif quantity == "lambda":
        step = t.multiplier_step

        def multiplier_step(ro):
            stats = step(ro)
            if later():
                t.lagrange._log_lambda = math.nan
            return stats

        t.multiplier_step = multiplier_step
    elif quantity == "cost advantages":
        compute = t.compute_advantages

        def compute_advantages(ro, rewards, costs):
            compute(ro, rewards, costs)
            if later():
                ro.cost_adv[0, 0] = math.nan

        t.compute_advantages = compute_advantages


@pytest.mark.parametrize("quantity", ["reward", "cost", "lambda", "cost advantages"])
def test_ppo_stops_on_a_non_finite_quantity_and_keeps_the_checkpoint(tmp_path, quantity):
    t = _stub_trainer(tmp_path)
    _nan_at_iteration_2(t, quantity)
    saved = {}
    original = t.step

    def step():
        if t.iteration == 1:
            saved.update(snapshot(tmp_path / "checkpoint"))
        return original()

    t.step = step
    with pytest.raises(NonFiniteError) as err:
        t.train()
    assert (err.value.stage, err.value.step, err.value.quantity) == ("ppo (ppo_lag)", 2, quantity)
    message = str(err.value)
    assert f"non-finite {quantity} = nan" in message and "step 2" in message and "'ppo (ppo_lag)'" in message
    assert str(tmp_path / "checkpoint") in message
    assert saved and snapshot(tmp_path / "checkpoint") == saved  # iteration 1's checkpoint, untouched
    assert '"iteration": 1' in (tmp_path / "checkpoint" / "trainer_state.json").read_text()


def test_ppo_lagrange_never_sees_a_nan_cost_even_from_a_method_hook(tmp_path):
    """RePO feeds the multiplier its own violations: the multiplier's own guard is the last line."""
    t = _stub_trainer(tmp_path, "repo")
    t.violations = lambda ro: torch.full((B,), math.nan)
    with pytest.raises(NonFiniteError, match="episode cost"):
        t.step()
    assert len(t.lagrange.window) == 0


@pytest.mark.parametrize("which", ["actor loss", "reward critic loss"])
def test_ppo_stops_on_a_non_finite_loss_before_the_optimiser(tmp_path, monkeypatch, which):
    from types import SimpleNamespace

    import saferlhfv.train.ppo.trainer as trainer_module

    t = _stub_trainer(tmp_path)
    t.iteration = 4
    steps = []
    t._optimise = lambda loss, role: steps.append(role)
    critic = lambda **inputs: SimpleNamespace(scores=torch.full((B, T + 1), math.nan))  # noqa: E731
    t.roles = SimpleNamespace(actor=None, critics=True, reward_critic=critic, cost_critic=critic)
    bad_actor = which == "actor loss"
    logp = torch.full((B, T), math.nan if bad_actor else -1.0)
    monkeypatch.setattr(trainer_module, "token_logprobs", lambda *args, **kwargs: (logp, None))
    ro = _rollout()
    ro.advantages = torch.ones(B, T)
    ro.reward_ret = ro.cost_ret = torch.zeros(B, T)
    mb = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, "vision": {}, "mask": ro.mask,
          "old_logp": ro.old_logp, "ref_logp": ro.ref_logp, "advantages": ro.advantages,
          "reward_values": ro.reward_values, "cost_values": ro.cost_values, "reward_ret": ro.reward_ret,
          "cost_ret": ro.cost_ret, "response_start": 0}  # fmt: skip
    with pytest.raises(NonFiniteError, match=f"non-finite {which} = nan in stage 'ppo \\(ppo_lag\\)' at step 5"):
        t.minibatch_step(mb)
    assert steps == ([] if bad_actor else ["actor"])  # the NaN loss never reached its optimiser
