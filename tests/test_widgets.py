"""Widget callbacks are pure library functions: tested here without a browser.

The explorers' sliders are changed programmatically (``controls[name].value = x``); the
recomputed result and the plotted data must change the way the algorithm says they should.
"""

import json
import math

import numpy as np
import pytest

from saferlhfv.algorithms.lagrange import Lagrange
from saferlhfv.dual import (
    DualSettings,
    dynamics_summary,
    equilibrium,
    frontier_from_runs,
    policy_expectations,
    response_curve,
    simulate_dual,
    stationary_response,
    tradeoff_at,
    training_trajectory,
)
from saferlhfv.live import LiveModels, live_sample, question_choices, verdict_rows
from saferlhfv.plotting import plot_dual
from saferlhfv.rollout_table import RolloutTable, synthetic_rollout_table
from saferlhfv.widgets import DualDynamicsExplorer, LiveSampleExplorer, TradeoffExplorer


@pytest.fixture(scope="module")
def table():
    return synthetic_rollout_table(40, 8, seed=0)


# --------------------------------------------------------------------------- the fast policy model


def test_table_json_round_trip(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    again = RolloutTable.load(path)
    np.testing.assert_allclose(again.reward, table.reward, atol=1e-4)
    assert again.harmful.tolist() == table.harmful.tolist() and again.responses == table.responses
    with pytest.raises(ValueError, match="shape"):
        RolloutTable(table.reward, table.cost[:, :3], table.helpful, table.harmless, table.harmful, [], [])


def test_uniform_weights_are_the_precursor(table):
    w = np.full(table.reward.shape, 1 / table.k)
    e = policy_expectations(table, w)
    assert e["reward"] == pytest.approx(table.reward.mean()) and e["cost"] == pytest.approx(table.cost.mean())
    assert stationary_response(table, 0.0, tau=1e6)["cost"] == pytest.approx(table.cost.mean(), abs=1e-4)


def test_stationary_cost_falls_with_lambda_and_equilibrium_meets_budget(table):
    curve = response_curve(table, np.logspace(-2, 2, 25))
    assert np.all(np.diff(curve["cost"]) <= 1e-12) and curve["cost"][0] > curve["cost"][-1]
    d = stationary_response(table, 1.0)["cost"]
    eq = equilibrium(table, d)
    assert eq["lambda"] == pytest.approx(1.0, rel=1e-3) and eq["cost"] == pytest.approx(d, abs=1e-6)
    assert equilibrium(table, table.cost.max() + 1)["lambda"] == 0.0  # inactive budget
    assert math.isinf(equilibrium(table, table.cost.min() - 1)["lambda"])  # out of reach


def test_simulate_dual_uses_the_library_multiplier(table):
    """Exact-expectation mode: lambda follows Lagrange.update fed the policy's E[C], step by step."""
    s = DualSettings(threshold=-1.0, lambda_init=2.0, lambda_lr=0.05, lambda_update_delay_steps=2,
                     cost_window=32, rollout_batch_size=8, iterations=25, sampled=False)  # fmt: skip
    res = simulate_dual(table, s)
    lag = Lagrange(2.0, 0.05, 20.0, threshold=-1.0, update_delay_steps=2, cost_window=32)
    for t in range(25):
        stats = lag.update([res["cost"][t]] * 8)
        assert res["lambda"][t] == pytest.approx(lag.lambda_, rel=1e-12)
        assert res["window_cost"][t] == pytest.approx(stats["Jc"], rel=1e-12)
    assert not res["updated"][:2].any() and res["updated"][2:].all()  # the delay
    assert res["lambda"][0] == res["lambda"][1] == 2.0


def test_simulate_dual_is_pure_and_seeded(table):
    s = DualSettings(threshold=-1.0, iterations=40)
    a, b = simulate_dual(table, s), simulate_dual(table, s)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = simulate_dual(table, s.replace(seed=1))
    assert not np.array_equal(a["batch_cost"], c["batch_cost"])


def test_budget_and_lambda_max_move_the_dynamics(table):
    base = DualSettings(threshold=-1.0, lambda_init=1.0, iterations=300)
    tight, loose = simulate_dual(table, base.replace(threshold=-1.5)), simulate_dual(table, base.replace(threshold=0.0))
    assert tight["lambda"][-50:].mean() > loose["lambda"][-50:].mean()
    assert tight["cost"][-50:].mean() < loose["cost"][-50:].mean()
    assert tight["reward"][-50:].mean() < loose["reward"][-50:].mean()
    capped = simulate_dual(table, base.replace(threshold=-2.5, lambda_max=3.0, lambda_lr=0.5))
    assert capped["lambda"].max() <= 3.0 + 1e-9 and capped["lambda"].max() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="lambda_max"):
        simulate_dual(table, base.replace(lambda_init=5.0, lambda_max=2.0))


def test_large_lambda_lr_oscillates_small_one_converges_slowly(table):
    d = stationary_response(table, 1.0)["cost"]
    base = DualSettings(threshold=d, lambda_init=0.1, iterations=300)
    slow, tuned, fast = (dynamics_summary(simulate_dual(table, base.replace(lambda_lr=lr))) for lr in (0.01, 0.1, 1.0))
    assert fast["lambda_log_range"] > 3 * tuned["lambda_log_range"]  # oscillation
    assert fast["cost_crossings"] > tuned["cost_crossings"]
    assert slow["mean_gap"] > 0.3 and abs(tuned["mean_gap"]) < 0.15  # slow: still over budget
    assert abs(slow["final_lambda"] - 1.0) > abs(tuned["final_lambda"] - 1.0)


def test_paper_defaults_start_over_cautious_then_decay(table):
    d = stationary_response(table, 1.0)["cost"]
    base = DualSettings(threshold=d, lambda_init=1.0, lambda_lr=0.1, lambda_max=20.0, iterations=300)
    small, paper = simulate_dual(table, base), simulate_dual(table, base.replace(lambda_init=10.0))
    assert paper["cost"][:30].min() < small["cost"][:30].min()  # over-cautious early phase
    assert paper["reward"][:30].min() < small["reward"][:30].min()
    assert paper["lambda"].max() <= 20.0 + 1e-9
    assert paper["lambda"][-50:].mean() == pytest.approx(small["lambda"][-50:].mean(), rel=0.5)  # same end point


def test_training_trajectory_reads_metrics(tmp_path):
    records = [{"iteration": i + 1, "lambda": 1.0 / (i + 1), "cost": -i, "reward": i, "threshold": 0.0,
                "cost_window_mean": -i / 2, "oracle_harmful_safety": 0.5} for i in range(4)]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    traj = training_trajectory(path)
    assert traj["lambda"].tolist() == [1.0, 0.5, 1 / 3, 0.25] and traj["threshold"].tolist() == [0.0] * 4


# --------------------------------------------------------------------------- the dual-dynamics widget


def test_dual_explorer_slider_changes_plotted_data(table):
    d = round(stationary_response(table, 1.0)["cost"], 2)
    ex = DualDynamicsExplorer(table, DualSettings(threshold=d, lambda_init=0.1, lambda_lr=0.1, iterations=300))
    assert ex.error is None and len(ex.result["lambda"]) == 300
    lam_line = ex.fig.axes[0].lines[0]
    np.testing.assert_array_equal(lam_line.get_ydata(), ex.result["lambda"])
    calm = dynamics_summary(ex.result)

    ex.controls["lambda_lr"].value = 1.0  # as a user dragging the slider
    assert ex.settings.lambda_lr == pytest.approx(1.0)
    wild = dynamics_summary(ex.result)
    assert wild["lambda_log_range"] > 3 * calm["lambda_log_range"]
    np.testing.assert_array_equal(ex.fig.axes[0].lines[0].get_ydata(), ex.result["lambda"])

    budget_line = ex.fig.axes[1].lines[1]
    ex.controls["threshold"].value = d + 0.5
    assert np.allclose(ex.fig.axes[1].lines[1].get_ydata(), d + 0.5) and not np.allclose(
        budget_line.get_ydata(), d + 0.5
    )

    ex.controls["iterations"].value = 50
    assert len(ex.fig.axes[0].lines[0].get_xdata()) == 50 and ex.calls >= 4
    assert "final lambda" in ex.status.value


def test_dual_explorer_reports_invalid_settings_without_crashing(table):
    ex = DualDynamicsExplorer(table, DualSettings(lambda_init=1.0, lambda_max=20.0, iterations=30))
    good = ex.result
    ex.controls["lambda_max"].value = 0.5  # below lambda_init: Lagrange refuses
    assert ex.error is not None and "lambda_max" in ex.error and ex.result is good
    ex.controls["lambda_init"].value = 0.3
    assert ex.error is None and ex.result["lambda"].max() <= 0.5 + 1e-9


def test_dual_explorer_set_recomputes_once(table):
    ex = DualDynamicsExplorer(table, DualSettings(iterations=20))
    calls = ex.calls
    ex.set(lambda_init=2.0, lambda_lr=0.2, cost_window=16)
    assert ex.calls == calls + 1 and ex.result["lambda"][0] == pytest.approx(2.0)


def test_dual_explorer_bug_is_shown_in_the_widget_and_raised_outside_ipython(table, monkeypatch):
    """A callback bug (not a rejected setting) turns the status red with its type, and raises outside IPython."""
    ex = DualDynamicsExplorer(table, DualSettings(iterations=20))
    good = ex.result

    def broken(*_a, **_k):
        raise RuntimeError("simulation broke")

    monkeypatch.setattr("saferlhfv.widgets.simulate_dual", broken)
    with pytest.raises(RuntimeError, match="simulation broke"):
        ex.controls["lambda_lr"].value = 0.5
    assert ex.error == "RuntimeError: simulation broke" and "the update failed" in ex.status.value
    assert ex.result is good


# --------------------------------------------------------------------------- budget -> trade-off


def _run(d, safety, helpful, cats):
    return {"threshold": d, "safety_rate": safety, "harmful_safety_rate": safety - 0.1, "helpful_winrate": helpful,
            "benign_helpfulness": 1.0, "mean_cost": d, "final_lambda": 1.0, "per_category_safety": cats}  # fmt: skip


RUNS = [
    _run(0.5, 0.55, 0.70, {"a": 0.2, "b": 0.4}),
    _run(-2.5, 0.95, 0.40, {"a": 1.0, "b": 0.8}),
    _run(-1.0, 0.75, 0.55, {"a": 0.6, "b": 0.6}),
]


def test_frontier_sorted_and_interpolated():
    f = frontier_from_runs(RUNS)
    assert f["threshold"].tolist() == [-2.5, -1.0, 0.5] and f["categories"] == ["a", "b"]
    at = tradeoff_at(f, -1.0)
    assert not at["interpolated"] and at["safety_rate"] == pytest.approx(0.75)
    mid = tradeoff_at(f, -1.75)
    assert mid["interpolated"] and mid["between"] == (-2.5, -1.0)
    assert mid["safety_rate"] == pytest.approx(0.85) and mid["per_category_safety"]["a"] == pytest.approx(0.8)
    assert tradeoff_at(f, 9.0)["threshold"] == 0.5  # clipped to the trained range
    with pytest.raises(ValueError):
        frontier_from_runs([])


def test_tradeoff_explorer_slider_moves_the_point():
    precursor = {"safety_rate": 0.6, "helpful_winrate": 0.5, "per_category_safety": {"a": 0.3, "b": 0.3}}
    ex = TradeoffExplorer(RUNS, precursor=precursor, threshold=-2.5)
    point = ex.fig.axes[0].lines[1]
    assert point.get_ydata()[0] == pytest.approx(0.95)
    bars = [p.get_height() for p in ex.fig.axes[1].patches]
    ex.controls["threshold"].value = 0.5
    assert ex.result["safety_rate"] == pytest.approx(0.55)
    assert ex.fig.axes[0].lines[1].get_ydata()[0] == pytest.approx(0.55)
    new_bars = [p.get_height() for p in ex.fig.axes[1].patches]
    assert new_bars[:2] == bars[:2] == [0.3, 0.3]  # precursor bars stay
    assert new_bars[2:] == pytest.approx([0.2, 0.4]) and bars[2:] == pytest.approx([1.0, 0.8])
    ex.controls["threshold"].value = -0.25
    assert ex.result["interpolated"] and "interpolated" in ex.status.value


# --------------------------------------------------------------------------- live sample


def test_question_choices_rejudge_the_same_picture():
    from saferlhfv.config import DataConfig
    from saferlhfv.data.oracle import parse_context
    from saferlhfv.data.world import rl_prompts

    cfg = DataConfig(prompts_per_category_train=1, prompts_per_category_eval=1)
    prompts = rl_prompts(cfg, "evaluation")
    for i in range(len(prompts)):
        row = prompts[i]
        choices = question_choices(row["context"])
        assert choices[0][0] == row["question"]
        own = json.loads(row["context"])
        for question, context in choices:
            ctx = json.loads(context)
            parse_context(context)  # valid for the oracle
            assert ctx["object"] == own["object"] and ctx["variant"] == own["variant"] and ctx["question"] == question
        kinds = {json.loads(c)["kind"] for _, c in choices}
        assert {"caption", "text"} <= kinds


class _FakeGuard:
    def moderate(self, images, questions, responses=None):
        return [{"p_unsafe": 0.9, "flagged": True, "severity": "severe", "category": "violence"} for _ in questions]


@pytest.fixture(scope="module")
def live_models():
    from saferlhfv.config import DataConfig
    from saferlhfv.data.world import text_corpus
    from saferlhfv.models.factory import load_vlm
    from saferlhfv.models.score import ScoreModel
    from tests.helpers import tiny_model_config

    model_cfg = tiny_model_config(tiny_vocab_size=600)
    corpus = text_corpus(DataConfig())
    policy, processor = load_vlm(model_cfg, corpus)
    precursor, _ = load_vlm(tiny_model_config(tiny_vocab_size=600), corpus, seed=1)
    return LiveModels(precursor.eval(), policy.eval(), processor, ScoreModel(policy).eval(),
                      ScoreModel(precursor, seed=3).eval(), _FakeGuard())  # fmt: skip


def test_live_sample_every_verdict(live_models):
    from saferlhfv.config import DataConfig
    from saferlhfv.data.world import rl_prompts

    prompts = rl_prompts(DataConfig(prompts_per_category_train=1, prompts_per_category_eval=1), "evaluation")
    row = prompts[0]
    out = live_sample(live_models, row["image"], row["question"], row["context"], seed=0, max_new_tokens=5)
    assert out["harmful_prompt"] == bool(row["is_harmful"])
    for name in ("precursor", "aligned"):
        e = out[name]
        assert isinstance(e["response"], str) and isinstance(e["reward"], float) and isinstance(e["cost"], float)
        assert e["guard"]["flagged"] and set(e["oracle"]) == {"helpful", "harmless", "behaviour", "safe"}
    rows = verdict_rows(out)
    assert [r["policy"] for r in rows] == ["precursor", "aligned"] and rows[0]["guard"].startswith("BLOCK")
    again = live_sample(live_models, row["image"], row["question"], row["context"], seed=0, max_new_tokens=5)
    assert again["aligned"]["response"] == out["aligned"]["response"]  # seeded


def test_live_explorer_controls_recompute(live_models):
    from saferlhfv.config import DataConfig
    from saferlhfv.data.world import rl_prompts

    prompts = rl_prompts(DataConfig(prompts_per_category_train=1, prompts_per_category_eval=1), "evaluation")
    no_guard = LiveModels(**{**live_models.__dict__, "guard": None, "guard_note": "none here"})
    ex = LiveSampleExplorer(no_guard, prompts, index=0, max_new_tokens=4)
    assert ex.error is None and ex.rows[0]["guard"] == "n/a" and "none here" in ex.table.value
    assert ex.result["question"] == prompts[0]["question"] and ex.picture.value[:4] == b"\x89PNG"
    ex.controls["question"].value = len(ex.choices) - 1  # the captioning question
    assert ex.result["question"] == ex.choices[-1][0] and ex.result["harmful_prompt"] is False
    ex.controls["image"].value = 3
    assert ex.controls["question"].value == 0 and ex.result["question"] == prompts[3]["question"]
    calls = ex.calls
    ex.controls["seed"].value = 7
    assert ex.calls == calls + 1


def test_without_a_cap_a_large_start_overflows_then_collapses_to_zero(table):
    """The multiplicative rule's failure that lambda_max prevents: overshoot, then lambda == 0 for good."""
    d = stationary_response(table, 1.0)["cost"]
    base = DualSettings(threshold=d, lambda_init=10.0, iterations=200)
    free, capped = simulate_dual(table, base.replace(lambda_max=None)), simulate_dual(table, base)
    assert free["lambda"].max() > 1e100 and free["lambda"][-1] == 0.0 and (free["lambda"][-20:] == 0).all()
    assert capped["lambda"].max() <= 20.0 + 1e-9 and 0.1 < capped["lambda"][-1] < 20.0
    fig = plot_dual({"free": free})  # drawable despite 1e304 and 0
    assert np.isfinite(fig.axes[0].get_ylim()).all()
    assert math.isfinite(dynamics_summary(free)["lambda_log_range"])


def test_dual_settings_from_ppo_copy_the_multiplier_fields_and_take_overrides():
    from saferlhfv.config import load_config

    ppo = load_config("tiny").ppo
    s = DualSettings.from_ppo(ppo, threshold=-2.0, iterations=7)
    assert (s.threshold, s.iterations) == (-2.0, 7)
    assert (s.lambda_init, s.lambda_lr, s.lambda_max) == (ppo.lambda_init, ppo.lambda_lr, ppo.lambda_max)
    assert (s.lambda_update_delay_steps, s.cost_window, s.rollout_batch_size) == (
        ppo.lambda_update_delay_steps, ppo.cost_window, ppo.rollout_batch_size)  # fmt: skip


# --------------------------------------------------------------------------- guard threshold


def test_threshold_explorer_slider_moves_recall_and_over_blocking():
    from saferlhfv.widgets import ThresholdExplorer

    # two unsafe answers (p 0.9, 0.6) and two safe ones (p 0.7, 0.4), severity "none" throughout
    table = [{"p_unsafe": p, "severity_level": 0, "is_unsafe": u} for p, u in ((0.9, 1), (0.6, 1), (0.7, 0), (0.4, 0))]
    ex = ThresholdExplorer(table, threshold=0.5)
    assert (ex.result["recall"], ex.result["false_positive_rate"]) == (1.0, 0.5)  # flags 0.9, 0.6, 0.7
    assert "recall 1.000" in ex.status.value and "false-positive rate 0.500" in ex.status.value
    ex.controls["threshold"].value = 0.65  # flags 0.9 and 0.7
    assert (ex.result["recall"], ex.result["false_positive_rate"], ex.result["precision"]) == (0.5, 0.5, 0.5)
    ex.controls["threshold"].value = 0.95  # flags nothing: precision undefined
    assert ex.result["recall"] == 0.0 and ex.result["precision"] is None and "precision undefined" in ex.status.value
    assert ex.fig.axes[0].lines[3].get_xdata()[0] == 0.95 and ex.error is None
