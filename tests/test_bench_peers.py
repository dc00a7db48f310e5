"""The peer benchmark's plumbing, fast (seconds; no network, no venv, no training).

``python -m saferlhfv.bench --peers`` itself builds venvs and runs for minutes: it is a benchmark, not a
test. Here: FLOP counting against hand-computed counts, the result line a worker prints and its parsing,
the arithmetic of rates / MFU / ratios / targets, the report tables, the venv cache's decisions and its
error message, the phase clock of the profile, and the scaling grid.
"""

from __future__ import annotations

import json
import math
import subprocess
import time

import pytest
import torch

from saferlhfv.bench import peer_common as pc
from saferlhfv.bench import peers, scaling, venvs
from saferlhfv.bench.ours import LAYOUTS, Sizes
from saferlhfv.bench.ppo_profile import PhaseClock, group_phases

# --------------------------------------------------------------------------- FLOPs


def test_matmul_flops_is_two_m_n_k():
    assert pc.matmul_flops(3, 5, 7) == 2 * 3 * 5 * 7
    a, b = torch.randn(6, 10), torch.randn(10, 4)
    out, flops = pc.count_flops(torch.mm, a, b)
    assert flops == 2 * 6 * 4 * 10 and out.shape == (6, 4)


def test_flops_of_a_tiny_linear_model_forward_and_backward():
    torch.manual_seed(0)
    batch, d_in, hidden, d_out = 8, 16, 32, 4
    model = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))
    x = torch.randn(batch, d_in)
    forward = 2 * batch * d_in * hidden + 2 * batch * hidden * d_out  # the biases' adds are not counted
    _, flops = pc.count_flops(model, x)
    assert flops == forward

    def step():
        model(x).sum().backward()

    # backward: the weight gradient of both layers (2 m n k each) and the input gradient of the second
    # only (the first layer's input needs no gradient)
    _, flops = pc.count_flops(step)
    assert flops == forward + forward + 2 * batch * hidden * d_out


def test_decoder_gemm_shapes_and_mfu():
    shapes = pc.decoder_gemm_shapes(tokens=1000, rows=16, hidden=128, intermediate=344, vocab=1024)
    assert (1000, 344, 128) in shapes and (1000, 128, 344) in shapes and (16, 1024, 128) in shapes
    # q / o and k / v coincide without grouped-query attention: 4 distinct shapes at each row count
    assert len(shapes) == 8 and all(m in (1000, 16) for m, _, _ in shapes)
    assert pc.mfu(flops=4e9, seconds=2.0, peak_flop_per_s=1e10) == pytest.approx(0.2)


def test_gemm_peak_reports_the_best_shape():
    peak = pc.gemm_peak([(8, 8, 8), (64, 64, 64)], min_seconds=0.003)
    assert peak["peak_flop_per_s"] == max(r[3] for r in peak["shapes"]) > 0
    assert peak["best_shape"] in ([8, 8, 8], [64, 64, 64]) and peak["threads"] >= 1


# --------------------------------------------------------------------------- the result line


PEER_STDOUT = """===training policy===
{'eps': 2, 'objective/kl': 1.0e-06, 'objective/entropy': 215.7, 'episode': 8, 'epoch': 0.25}
SAFERLHFV_PEER_RESULT {"batch":16,"episodes_per_s":30.5,"flops_per_iteration":30323130368,"iteration_s":[0.52,0.53],"kind":"ppo","system":"TRL 0.19.1 PPOTrainer"}
{'eps': 2, 'objective/kl': 0.003, 'episode': 16, 'epoch': 0.5}
"""  # noqa: E501


def test_parse_a_peer_result_line_among_its_logs():
    out = pc.parse_result(PEER_STDOUT)
    assert out["system"] == "TRL 0.19.1 PPOTrainer" and out["episodes_per_s"] == 30.5
    assert out["flops_per_iteration"] == 30323130368 and out["iteration_s"] == [0.52, 0.53]


def test_result_line_round_trip_and_the_last_line_wins():
    line = pc.result_line({"b": 1.5, "a": [1, 2]})
    assert line.startswith(pc.RESULT_PREFIX) and "\n" not in line
    assert pc.parse_result(f"noise\n{pc.result_line({'a': 0})}\n{line}\n") == {"a": [1, 2], "b": 1.5}
    with pytest.raises(ValueError):
        pc.result_line({"x": math.nan})  # a NaN would not be JSON


def test_parse_errors_name_the_worker_and_quote_stderr():
    with pytest.raises(pc.PeerOutputError, match="TRL PPO peer printed no result line") as err:
        pc.parse_result("{'eps': 2}\n", stderr="Traceback\nImportError: no trl", what="TRL PPO peer")
    assert "ImportError: no trl" in str(err.value)
    with pytest.raises(pc.PeerOutputError, match="not JSON"):
        pc.parse_result(pc.RESULT_PREFIX + "{broken\n")
    with pytest.raises(pc.PeerOutputError, match="not a JSON object"):
        pc.parse_result(pc.RESULT_PREFIX + "[1, 2]\n")


def test_run_worker_parses_a_real_process(tmp_path):
    import sys

    script = tmp_path / "w.py"
    script.write_text("import json\nprint('log line')\nprint('SAFERLHFV_PEER_RESULT ' + json.dumps({'x': 3}))\n")
    env = peers.worker_env(threads=1, peer=True)
    assert env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" not in env
    assert peers.run_worker([sys.executable, str(script)], env=env, what="w", timeout_s=60) == {"x": 3}
    script.write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(pc.PeerOutputError, match=r"failed \(exit 3\)[\s\S]*boom"):
        peers.run_worker([sys.executable, str(script)], env=env, what="w", timeout_s=60)


# --------------------------------------------------------------------------- commands, sizes, scripts


def test_commands_and_sizes():
    sizes = Sizes.for_width(256)
    assert (sizes.hidden, sizes.heads, sizes.intermediate, sizes.layers) == (256, 8, 688, 4)
    assert Sizes.for_width(128) == Sizes()
    cmd = peers.peer_command("py", "s.py", sizes=Sizes(), threads=2, opts={"batch": 16, "no_flops": True, "x": None})
    assert cmd[:3] == ["py", "-P", "s.py"] and cmd[-3:] == ["--batch", "16", "--no-flops"]
    assert "--threads" in cmd and cmd[cmd.index("--hidden") + 1] == "128"
    cmd = peers.ours_command("ppo", sizes=Sizes(), threads=2, opts={"layout": "shared", "no_flops": False})
    assert cmd[1:4] == ["-m", "saferlhfv.bench.ours", "ppo"] and "--no-flops" not in cmd and "shared" in cmd
    from saferlhfv.config import apply_overrides, load_config

    cfg = apply_overrides(load_config("tiny"), {**Sizes.for_width(512).overrides(), **LAYOUTS["shared"]})
    assert cfg.model.tiny_hidden_size == 512 and cfg.ppo.shared_base and cfg.model.lora.enabled


@pytest.mark.parametrize("script", ["peer_trl_ppo.py", "peer_trl_reward.py"])
def test_peer_scripts_parse_their_arguments_without_trl(script):
    module = pc.load_sibling(script)  # stdlib-only at import: loads here, without TRL
    args = module.parse_args(["--batch", "64", "--hidden", "256", "--threads", "2"])
    assert (args.batch, args.hidden, args.threads, args.layers) == (64, 256, 2, 4)


def test_word_tokenizer_is_built_offline():
    tok = pc.word_tokenizer(vocab_size=64)
    assert len(tok) == 64 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode([5, 6]) == "w5 w6"
    rows = pc.random_token_rows(rows=3, length=5, vocab_size=64, seed=0)
    assert len(rows) == 3 and all(len(r) == 5 and min(r) >= 4 and max(r) < 64 for r in rows)


# --------------------------------------------------------------------------- rates, ratios, report


def _ppo_row(batch, ours_s, peer_s, ours_flops, peer_flops, peak=1e11):
    ours = [{"iteration_s": [ours_s, ours_s * 1.1], "flops_per_iteration": ours_flops, "peak_rss_mb": 700.0}]
    peer = [{"iteration_s": [peer_s], "flops_per_iteration": peer_flops, "peak_rss_mb": 600.0}]
    kw = {"per": batch, "times_key": "iteration_s", "flops_key": "flops_per_iteration", "peak": peak}
    row = {"batch": batch, "prompt_tokens": 73, "response_tokens": 32, "epochs": 1,
           "peak": {"peak_flop_per_s": peak}, "peer": peers._summary(peer, **kw),
           "ours": {"separate": peers._summary(ours, **kw)}}  # fmt: skip
    for side in [row["peer"], *row["ours"].values()]:
        side["flops_per_episode"] = side["flops"] / batch
    s = row["ours"]["separate"]
    s["episodes_ratio"] = s["rate"] / row["peer"]["rate"]
    s["mfu_ratio"] = s["mfu"] / row["peer"]["mfu"]
    return row


def test_pooled_rate_mfu_and_targets():
    rate = peers.pooled_rate([{"t": [1.0, 3.0]}, {"t": [2.0]}], per=16, times_key="t")
    assert rate["rate"] == pytest.approx(8.0) and rate["low"] == pytest.approx(8.0) and rate["high"] == 16 / 2.0
    r16 = _ppo_row(16, ours_s=0.5, peer_s=0.5, ours_flops=4.8e10, peer_flops=3.2e10)
    s = r16["ours"]["separate"]
    assert s["rate"] == pytest.approx(16 / 0.525) and s["mfu"] == pytest.approx(4.8e10 / 0.525 / 1e11)
    r64 = _ppo_row(64, ours_s=1.0, peer_s=0.8, ours_flops=1.9e11, peer_flops=1.3e11)
    reward = {"sequence_tokens": 106, "peer": {"106": {"ours_tokens_ratio": 1.2}, "45": {"ours_tokens_ratio": 0.9}}}
    rows = {t["what"]: t for t in peers.targets({"ppo": [r16, r64], "reward": reward})}
    assert rows["PPO episodes/s, ours (separate) / TRL, batch 16"]["met"] is False  # 0.95x < 1.5x
    assert rows["ours (separate) episodes/s, batch 64 / batch 16"]["value"] == pytest.approx((64 / 1.05) / (16 / 0.525))
    assert rows["RM-V tokens/s, ours / RewardTrainer (both 106 tokens)"]["met"] is True
    assert rows["RM-V tokens/s, ours / RewardTrainer at 45 tokens"]["met"] is False
    assert rows["TRL PPOTrainer episodes/s, batch 64 / batch 16 (for reference)"]["met"] is None


def test_format_peers_prints_both_tables_and_the_targets():
    result = {
        "threads": 2, "seconds": 300.0,
        "machine": {"load_average_before": [1.5, 1.0, 0.5], "processor": "Some CPU (avx2)"},
        "config": {"sizes": Sizes().__dict__},
        "ppo": [_ppo_row(16, 0.5, 0.5, 4.8e10, 3.2e10)],
        "reward": {"batch_pairs": 16, "sequence_tokens": 106, "peak": {"peak_flop_per_s": 1e11},
                   "ours": {"rate": 90.0, "tokens_per_s": 19080.0, "mfu": 0.2, "flop_per_s": 2e10,
                            "encode_s": 0.05, "tokens_per_s_with_encoding": 18000.0},
                   "peer": {"106": {"rate": 80.0, "tokens_per_s": 16960.0, "mfu": 0.18, "flop_per_s": 1.8e10,
                                    "ours_tokens_ratio": 1.125}}},
    }  # fmt: skip
    result["targets"] = peers.targets(result)
    result["ppo"][0]["peer_runs"] = [{"precision": "float32"}]
    result["reward"]["peer_runs"] = {"106": [{"precision": "float32"}]}
    text = peers.format_peers(result)
    for needle in ("TRL 0.19.1 PPOTrainer", "saferlhfv PPO-Lag, separate", "RewardTrainer", "targets (issue 18)",
                   "NOT met", "1.12", "load average before it: 1.50", "ours float32, peers float32",
                   "CPU: Some CPU (avx2)"):  # fmt: skip
        assert needle in text, needle
    assert "did not train in float32" not in text
    json.dumps(result)  # what --json / --out write
    # a peer left on TRL's bf16 autocast default is named, and the table warns
    result["ppo"][0]["peer_runs"] = [{"precision": "TRL defaults (bf16 autocast)"}]
    text = peers.format_peers(result)
    assert "peers TRL defaults (bf16 autocast) / float32" in text and "did not train in float32" in text


# --------------------------------------------------------------------------- the venv cache


def test_venv_cache_decisions_and_the_error_says_what_to_run(tmp_path, monkeypatch):
    env = venvs.peer_envs()["trl_ppo"]
    reqs = env.requirements()
    assert reqs[0] == f"torch=={torch.__version__.split('+')[0]}" and "trl==0.19.1" in reqs
    assert env.script_path().is_file()
    folder = tmp_path / env.name
    assert not venvs.is_ready(env, folder)
    python = venvs.venv_python(folder)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (folder / venvs.MARKER).write_text(json.dumps({"requirements": reqs}))
    assert venvs.is_ready(env, folder)
    assert venvs.ensure_venv(env, root=tmp_path, progress=lambda s: None) == python  # cached: nothing runs
    (folder / venvs.MARKER).write_text(json.dumps({"requirements": ["torch==0.0"]}))
    assert not venvs.is_ready(env, folder)  # other packages: rebuilt

    calls = []

    def failing_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(venvs.subprocess, "run", failing_run)
    with pytest.raises(venvs.PeerEnvError, match="creating the venv failed") as err:
        venvs.ensure_venv(env, root=tmp_path, progress=lambda s: None)
    assert "build it by hand" in str(err.value) and "python3 -m venv" in str(err.value)
    assert '"trl==0.19.1"' in str(err.value) and len(calls) == 1


# --------------------------------------------------------------------------- the profile's phase clock


def test_phase_clock_charges_nested_calls_to_their_own_phase():
    from torch.utils.flop_counter import FlopCounterMode

    clock = PhaseClock()
    a, b = torch.randn(32, 32), torch.randn(32, 32)

    def inner():
        time.sleep(0.02)
        return torch.mm(a, b)

    inner_w = clock.wrap(inner, "rollout: reference log-probs")

    def outer():
        torch.mm(a, b)
        torch.mm(a, b)
        time.sleep(0.01)
        return inner_w()

    outer_w = clock.wrap(outer, "update: other")
    opaque_w = clock.wrap(lambda: inner_w(), "rollout: generation", opaque=True)
    clock.counter = FlopCounterMode(display=False)
    with clock.counter:
        start = time.perf_counter()
        outer_w()
        outer_s = time.perf_counter() - start
        opaque_w()
    mm = 2 * 32 * 32 * 32
    assert clock.flops["update: other"] == 2 * mm and clock.flops["rollout: reference log-probs"] == mm
    assert clock.flops["rollout: generation"] == mm  # opaque: the call inside is not split off
    assert clock.calls["rollout: reference log-probs"] == 1
    # exclusive times: the inner call's (>= 20 ms of sleep) is not in the outer one's (>= 10 ms of its own)
    assert clock.seconds["rollout: reference log-probs"] >= 0.02 and clock.seconds["update: other"] >= 0.01
    assert clock.seconds["update: other"] <= outer_s - 0.02 + 1e-6
    groups = group_phases([{"phase": k, "seconds": v} for k, v in clock.seconds.items()])
    assert set(groups) == {"update (actor + critics: forward, backward, AdamW)", "generation",
                           "scoring (actor + reference log-probs, RM-V, CM-V)"}  # fmt: skip


# --------------------------------------------------------------------------- scaling


def test_scaling_grid_axes_and_figure():
    grid = scaling.ScalingGrid(batches=(8, 16, 32), lengths=(16, 32), widths=(128, 256))
    points = grid.points()
    assert points[0] == (16, 32, 128) and len(points) == len(set(points)) == 5
    rows = [{"system": s, "batch": b, "response_length": n, "width": w, "episodes_per_s": b / 4 + (s == "peer"),
             "peak_rss_mb": 500.0 + b} for (b, n, w) in points for s in scaling.SYSTEMS]  # fmt: skip
    rows.append({"system": "peer", "batch": 128, "response_length": 32, "width": 128, "error": "MemoryError: x"})
    result = {"threads": 2, "base": [16, 32, 128], "iterations": 1, "systems": list(scaling.SYSTEMS),
              "seconds": 12.0, "rows": rows}  # fmt: skip
    by_batch = scaling.axis_rows(result, "batch")
    assert [r["batch"] for r in by_batch["peer"]] == [8, 16, 32]  # the failed point is left out
    assert [r["width"] for r in scaling.axis_rows(result, "width")["shared"]] == [128, 256]
    text = scaling.format_scaling(result)
    assert "error at batch 128" in text and "4.00, - (516)" in text
    fig = scaling.plot_scaling(result)
    assert len(fig.axes) == 9
    import matplotlib.pyplot as plt

    plt.close(fig)
