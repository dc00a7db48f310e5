"""The Lagrange multiplier: the update rule by hand, delay, window, clamp, state, and agreement across ranks."""

from __future__ import annotations

import datetime
import json
import math
import socket
from collections import deque

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saferlhfv.algorithms import Lagrange
from saferlhfv.algorithms.lagrange import PIDLagrange
from saferlhfv.config import PPOConfig


def test_rises_over_budget_and_falls_under():
    up = Lagrange(1.0, 0.1, None, threshold=0.0, update_delay_steps=0)
    stats = up.update([1.0, 1.0])
    # Jc = 1 ; log lambda = 0 + 0.1 * 1 * (1 - 0) = 0.1 ; lambda = e^0.1 = 1.105171
    assert stats["Jc"] == 1.0 and stats["cost_gap"] == 1.0 and stats["updated"]
    assert up.lambda_ == pytest.approx(math.exp(0.1))
    assert stats["lambda"] == up.lambda_ and stats["log_lambda"] == pytest.approx(0.1)
    down = Lagrange(1.0, 0.1, None, threshold=0.0, update_delay_steps=0)
    down.update(torch.tensor([-1.0]))
    # log lambda = 0 + 0.1 * 1 * (-1) = -0.1
    assert down.lambda_ == pytest.approx(math.exp(-0.1))


def test_two_steps_by_hand_the_step_scales_with_lambda():
    lag = Lagrange(1.0, 0.5, None, threshold=-0.5, update_delay_steps=0)
    lag.update([0.5])
    # Jc = 0.5, gap = 0.5 - (-0.5) = 1 ; log lambda = 0 + 0.5 * 1 * 1 = 0.5 ; lambda = 1.648721
    assert lag.lambda_ == pytest.approx(math.exp(0.5))
    lag.update([0.5])
    # window [0.5, 0.5], Jc = 0.5 ; log lambda = 0.5 + 0.5 * 1.648721 * 1 = 1.324361 ; lambda = 3.759781
    assert lag.log_lambda == pytest.approx(0.5 + 0.5 * math.exp(0.5))
    assert lag.lambda_ == pytest.approx(3.759781, rel=1e-6)


def test_clamps_at_lambda_max():
    lag = Lagrange(10.0, 0.1, 20.0, threshold=0.0, update_delay_steps=0)
    lag.update([5.0])
    # log lambda = log 10 + 0.1 * 10 * 5 = 2.303 + 5 = 7.303 > log 20 = 2.996 -> lambda = 20
    assert lag.lambda_ == pytest.approx(20.0)
    lag.update([5.0])
    assert lag.lambda_ == pytest.approx(20.0)
    # and it can come down again: Jc = mean(5, 5, -40) = -10 ; log 20 + 0.1 * 20 * (-10) = 2.996 - 20
    lag.update([-40.0])
    assert lag.log_lambda == pytest.approx(math.log(20.0) - 20.0)


def test_no_max_stays_finite():
    lag = Lagrange(10.0, 1.0, None, threshold=0.0, update_delay_steps=0)
    for _ in range(5):
        lag.update([1000.0])
    assert math.isfinite(lag.lambda_)


def test_waits_for_the_delay_but_fills_the_window():
    lag = Lagrange(1.0, 0.1, None, threshold=0.0, update_delay_steps=2)
    # calls 1 and 2 (k <= delay) leave lambda alone
    assert not lag.update([1.0])["updated"]
    assert not lag.update([3.0])["updated"]
    assert lag.lambda_ == 1.0
    # call 3: the window holds [1, 3, 2] -> Jc = 2 ; log lambda = 0.1 * 1 * 2 = 0.2
    stats = lag.update([2.0])
    assert stats["updated"] and stats["Jc"] == pytest.approx(2.0)
    assert lag.lambda_ == pytest.approx(math.exp(0.2))


def test_delay_one_is_the_public_code_default():
    # public code: update when global_step >= delay, global_step = 0 on the first step
    lag = Lagrange(1.0, 0.1, None, threshold=0.0, update_delay_steps=1)
    assert not lag.update([1.0])["updated"]
    assert lag.update([1.0])["updated"]


def test_window_mean_uses_only_the_last_n_costs():
    lag = Lagrange(1.0, 0.0, None, threshold=0.0, update_delay_steps=0, cost_window=3)
    assert lag.update([10.0, 10.0, 10.0])["Jc"] == 10.0
    assert lag.update([0.0, 0.0, 0.0])["Jc"] == 0.0  # the 10s have left the window
    lag.update([1.0, 2.0])
    # window: [0, 1, 2]
    assert lag.update([3.0, 4.0])["Jc"] == pytest.approx(3.0)  # window [2, 3, 4]
    assert list(lag.window) == [2.0, 3.0, 4.0]


def test_no_costs_no_update():
    lag = Lagrange(1.0, 0.1, None, threshold=0.0, update_delay_steps=0)
    stats = lag.update([])
    assert math.isnan(stats["Jc"]) and not stats["updated"] and lag.lambda_ == 1.0
    assert lag.update(None)["window"] == 0


def test_fixed_modes_never_move():
    zero = Lagrange.fixed(0.0)
    assert zero.lambda_ == 0.0 and zero.log_lambda == -math.inf and zero.is_fixed
    stats = zero.update([100.0])
    assert not stats["updated"] and stats["lambda"] == 0.0 and stats["Jc"] == 100.0
    shaped = Lagrange.fixed(2.5, threshold=1.0)
    for _ in range(3):
        shaped.update([100.0])
    assert shaped.lambda_ == 2.5
    with pytest.raises(ValueError):
        Lagrange.fixed(-1.0)


def test_from_config_reads_the_paper_defaults():
    ppo = PPOConfig()
    lag = Lagrange.from_config(ppo)
    assert not lag.is_fixed and lag.lambda_ == pytest.approx(10.0)
    assert (lag.lambda_max, lag.lambda_lr, lag.threshold) == (20.0, 0.1, -0.5)
    assert (lag.update_delay_steps, lag.cost_window) == (1, 128)


def test_invalid_settings_raise():
    for kwargs in (
        dict(lambda_init=0.0, lambda_lr=0.1),
        dict(lambda_init=10.0, lambda_lr=0.1, lambda_max=5.0),
        dict(lambda_init=1.0, lambda_lr=-0.1),
        dict(lambda_init=1.0, lambda_lr=0.1, update_delay_steps=-1),
        dict(lambda_init=1.0, lambda_lr=0.1, cost_window=0),
    ):
        with pytest.raises(ValueError):
            Lagrange(**kwargs)


def test_state_round_trip_resumes_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, generator=g) for _ in range(10)]
    a = Lagrange(2.0, 0.1, 20.0, threshold=-0.5, update_delay_steps=2, cost_window=8)
    for costs in batches[:4]:
        a.update(costs)
    # through JSON, as a checkpoint would store it
    path = tmp_path / "lagrange.json"
    path.write_text(json.dumps(a.state_dict()))
    b = Lagrange(7.0, 0.5, None, threshold=3.0, update_delay_steps=0, cost_window=2)
    b.load_state_dict(json.loads(path.read_text()))
    assert b.lambda_ == a.lambda_ and list(b.window) == list(a.window)
    for costs in batches[4:]:
        assert a.update(costs) == b.update(costs)
    assert a.lambda_ == b.lambda_
    # a fixed multiplier survives the trip too
    f = Lagrange(1.0, 0.1)
    f.load_state_dict(Lagrange.fixed(0.0).state_dict())
    assert f.is_fixed and f.lambda_ == 0.0


# --------------------------------------------------------------------------- across processes

# Each rank's costs per step; different counts per rank, so a mean of per-rank means would be wrong.
RANK_COSTS = [
    [[0.0, 1.0], [2.0, 0.5], [-1.0, -1.0], [0.0, 0.0]],
    [[3.0, 4.0, 5.0], [1.0], [-2.0, -3.0, 0.5], [2.0]],
]
SETTINGS = dict(lambda_init=1.0, lambda_lr=0.1, lambda_max=5.0, threshold=0.5, update_delay_steps=1, cost_window=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        lag = Lagrange(**SETTINGS)
        lambdas = [lag.update(costs)["lambda"] for costs in RANK_COSTS[rank]]
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"lambdas": lambdas, "log_lambda": lag.log_lambda}, f)
    finally:
        dist.destroy_process_group()


def _pooled_reference() -> list[float]:
    """The same rule computed here, by hand, from the pooled per-rank windows."""
    windows = [deque(maxlen=SETTINGS["cost_window"]) for _ in RANK_COSTS]
    log_lambda, out = math.log(SETTINGS["lambda_init"]), []
    for step in range(len(RANK_COSTS[0])):
        for w, costs in zip(windows, RANK_COSTS):
            w.extend(costs[step])
        jc = sum(sum(w) for w in windows) / sum(len(w) for w in windows)
        if step + 1 > SETTINGS["update_delay_steps"]:
            log_lambda += SETTINGS["lambda_lr"] * math.exp(log_lambda) * (jc - SETTINGS["threshold"])
            log_lambda = min(log_lambda, math.log(SETTINGS["lambda_max"]))
        out.append(math.exp(log_lambda))
    return out


def test_lambda_agrees_across_ranks(tmp_path):
    world = 2
    mp.spawn(_rank_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    # identical on every rank, bit for bit
    assert results[0] == results[1]
    # and equal to the rule applied to the pooled costs (step 1 waits for the delay)
    expected = _pooled_reference()
    assert results[0]["lambdas"] == pytest.approx(expected, rel=1e-12)
    assert expected[0] == 1.0 and len(set(expected)) == len(expected)  # it did move every later step
    # a single process fed one rank's costs would not agree: the pooling matters
    alone = Lagrange(**SETTINGS)
    assert [alone.update(c)["lambda"] for c in RANK_COSTS[0]] != pytest.approx(expected)


# ---------------------------------------------------------------- PID multiplier (Stooke et al. 2020)


def test_pid_three_updates_by_hand():
    # kp 0.5, ki 0.2, kd 1.0, d = -1, window 1 (J_C = this batch's cost), no delay.
    lag = PIDLagrange(1.0, kp=0.5, ki=0.2, kd=1.0, lambda_max=10.0, threshold=-1.0, cost_window=1)
    s = lag.update([1.0])  # e = 2: I = 1 + 0.4 = 1.4; P = 1.0; no previous J_C -> D = 0
    assert (s["pid_i"], s["pid_p"], s["pid_d"]) == pytest.approx((1.4, 1.0, 0.0))
    assert lag.lambda_ == pytest.approx(2.4)
    s = lag.update([2.0])  # e = 3: I = 2.0; P = 1.5; D = 1.0 * (2 - 1) = 1.0
    assert lag.lambda_ == pytest.approx(4.5) and s["pid_d"] == pytest.approx(1.0)
    s = lag.update([-3.0])  # e = -2: I = 1.6; P = -1.0; cost fell -> D = 0
    assert lag.lambda_ == pytest.approx(0.6) and s["pid_d"] == 0.0
    # far under budget the proportional term switches the constraint off (lambda = 0, not negative)
    lag.update([-20.0])
    assert lag.lambda_ == 0.0 and lag.log_lambda == -math.inf


def test_pid_damps_the_overshoot_of_the_plain_update():
    # A toy plant: the cost follows lambda with a lag, c_{k+1} = c_k + 0.3 * (target(lambda) - c_k),
    # target(lambda) = 2 - 2 lambda (more lambda, less cost); budget d = 0 is met at lambda = 1.
    def run(lag, steps=150):
        cost, lams = 2.0, []
        for _ in range(steps):
            lag.update([cost])
            lams.append(lag.lambda_)
            cost += 0.3 * ((2.0 - 2.0 * lag.lambda_) - cost)
        return lams

    plain = run(Lagrange(0.1, 0.3, 10.0, threshold=0.0, cost_window=1))
    pid = run(PIDLagrange(0.1, kp=0.3, ki=0.1, kd=0.0, lambda_max=10.0, threshold=0.0, cost_window=1))
    assert max(pid) < max(plain)  # less overshoot above the equilibrium lambda = 1
    assert abs(pid[-1] - 1.0) < 0.05  # and it settles there


def test_pid_integral_is_clamped_and_gains_are_checked():
    lag = PIDLagrange(1.0, kp=0.0, ki=1.0, lambda_max=3.0, threshold=0.0, cost_window=1)
    for _ in range(10):
        lag.update([5.0])
    assert lag.integral == 3.0 and lag.lambda_ == 3.0  # anti-windup: it falls as soon as the cost does
    lag.update([-1.0])
    assert lag.lambda_ == pytest.approx(2.0)
    with pytest.raises(ValueError):
        PIDLagrange(1.0, kp=-1.0, ki=0.1)


def test_pid_from_config_and_resume_identically():
    ppo = PPOConfig(multiplier="pid", pid_kp=0.5, pid_ki=0.05, pid_kd=0.2, lambda_init=1.0, threshold=-4.0)
    a = Lagrange.from_config(ppo)
    assert isinstance(a, PIDLagrange) and (a.kp, a.ki, a.kd, a.lambda_) == (0.5, 0.05, 0.2, 1.0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, generator=g) - 3.0 for _ in range(8)]
    for b in batches[:4]:
        a.update(b)
    b_ = Lagrange.from_config(ppo)
    b_.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for b in batches[4:]:
        assert a.update(b)["lambda"] == b_.update(b)["lambda"]
    with pytest.raises(ValueError, match="PID"):
        PIDLagrange(1.0, kp=1.0, ki=0.1).load_state_dict(Lagrange(1.0, 0.1).state_dict())
    with pytest.raises(ValueError, match="plain"):
        Lagrange(1.0, 0.1).load_state_dict(a.state_dict())
