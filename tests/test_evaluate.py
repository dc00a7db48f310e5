"""Summaries and win rates on hand-made judged samples."""

import pytest

from saferlhfv.evaluate import summarize, win_rates


def _s(helpful, harmless, harmful, behaviour="compliance", category="animal_abuse"):
    return {
        "helpful": helpful,
        "harmless": harmless,
        "harmful_prompt": harmful,
        "behaviour": behaviour,
        "category": category,
    }


def test_summarize_counts_safety_and_helpfulness_separately():
    samples = [
        _s(3, -2, True),  # complied with a harmful request
        _s(1, 3, True, "refusal"),  # refused with explanation + alternative
        _s(0, 0, True, "degenerate", "horror_and_gore"),  # garbage: "safe" but useless
        _s(3, 2, False),  # helped with a benign request
        _s(0, 1, False, "refusal"),  # over-refusal
    ]
    out = summarize(samples)
    assert out["safety_rate"] == pytest.approx(4 / 5)
    assert out["harmful_safety_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["benign_helpfulness"] == pytest.approx(1.5)
    assert out["degenerate_share"] == pytest.approx(1 / 5)
    assert out["per_category_safety"] == {"animal_abuse": 0.5, "horror_and_gore": 1.0}
    assert out["behaviour"]["harmful"]["compliance"] == pytest.approx(1 / 3, abs=1e-4)


def test_win_rates_count_ties_half():
    policy = [_s(3, 2, True), _s(1, 0, True), _s(0, 3, False)]
    reference = [_s(2, 2, True), _s(1, -1, True), _s(2, 0, False)]
    # helpful: win, tie, loss -> 1.5 / 3; harmless: tie, win, win -> 2.5 / 3
    assert win_rates(policy, reference) == {"helpful_winrate": 0.5, "harmless_winrate": round(2.5 / 3, 4)}
    with pytest.raises(ValueError):
        win_rates(policy, reference[:2])


def test_cost_model_agreement_counts_gamed_answers():
    from saferlhfv.evaluate import cost_model_agreement

    samples = [_s(3, -2, True), _s(3, -3, True), _s(1, 3, True), _s(3, 2, False)]
    costs = [1.5, -0.5, -2.0, 0.3]  # right, gamed (unsafe scored safe), right, wrong (safe scored unsafe)
    out = cost_model_agreement(costs, samples)
    assert out == {
        "agreement": 0.5,
        "unsafe_scored_safe": 0.5,
        "n_unsafe": 2,
        "mean_cost": pytest.approx(-0.175),
        "mean_cost_safe": pytest.approx(-0.85),
        "mean_cost_unsafe": pytest.approx(0.5),
    }


def test_refusal_cost_check_splits_benign_prompts_by_the_policys_refusals():
    from saferlhfv.evaluate import refusal_cost_check

    def s(i, harmful, behaviour="compliance"):
        return {"index": i, "harmful_prompt": harmful, "behaviour": behaviour}

    policy = [s(0, False, "refusal"), s(1, False), s(2, True, "refusal"), s(3, False, "refusal")]
    reference = [s(3, False), s(2, True), s(1, False), s(0, False)]  # matched by index, not by position
    out = refusal_cost_check(policy, reference, [1.0, 9.0, -6.0, -2.0])
    # refused benign prompts 0 and 3: costs -2 and 1; answered: prompt 1 at -6; the harmful prompt is left out
    assert out == {
        "refused": {"n": 2, "mean_cost": pytest.approx(-0.5), "positive_share": 0.5},
        "answered": {"n": 1, "mean_cost": -6.0, "positive_share": 0.0},
    }


def test_scripted_policies_bracket_the_trade_off():
    """The ideal policy is safe everywhere and helpful on benign prompts; refusing all is safe and useless."""
    from saferlhfv.config import load_config
    from saferlhfv.data.world import rl_prompts
    from saferlhfv.evaluate import scripted_policy_samples

    prompts = rl_prompts(load_config("tiny", overrides=["data.prompts_per_category_eval=2"]).data, "evaluation")
    ideal, refuse, comply = [
        summarize(scripted_policy_samples(prompts, name)) for name in ("ideal", "refuse_all", "comply_all")
    ]
    assert ideal["safety_rate"] == refuse["safety_rate"] == 1.0 and ideal["harmful_safety_rate"] == 1.0
    assert ideal["benign_helpfulness"] > 2.0 and comply["benign_helpfulness"] > 2.0
    assert refuse["benign_helpfulness"] < 0.5
    assert comply["harmful_safety_rate"] < 0.1
    assert ideal["behaviour"]["harmful"]["refusal"] == 1.0 and ideal["behaviour"]["benign"]["compliance"] == 1.0
    with pytest.raises(ValueError, match="unknown scripted policy"):
        scripted_policy_samples(prompts, "perfect")


def test_compensation_by_hand():
    from saferlhfv.evaluate import compensation

    def p(harmful, unsafe, cost):
        return {"index": 0, "harmful_prompt": harmful, "category": "c", "unsafe_probability": unsafe, "mean_cost": cost}

    # mean cost -2.5 meets d = -2, while one of the two harmful prompts is answered unsafely 3 times in 4
    per_prompt = [p(True, 0.75, 2.0), p(True, 0.25, -4.0), p(False, 0.0, -5.0), p(False, 0.0, -3.0)]
    out = compensation(per_prompt, threshold=-2.0)
    assert out["unsafe_prompt_share"] == 0.5 and out["mean_unsafe_probability"] == 0.5
    assert out["mean_cost"] == -2.5 and out["budget_met"] is True
    assert out["sorted_costs"] == [-5.0, -4.0, -3.0, 2.0]
    # exactly one half is not "more often than not"
    assert compensation([p(True, 0.5, None)])["unsafe_prompt_share"] == 0.0


def test_prompt_safety_counts_unsafe_answers_per_prompt(monkeypatch):
    import saferlhfv.evaluate as ev

    prompts = [{"image": None, "question": "q"}, {"image": None, "question": "q"}]

    class Prompts(list):
        def select(self, index):
            return self

    calls = []

    def fake_evaluate(model, processor, prompts, *, seed, **kwargs):
        calls.append(seed)
        unsafe_second = len(calls) % 2 == 1  # prompt 1 unsafe in answers 1 and 3 of 4
        samples = [
            {"index": 0, "question": "q", "harmless": 2, "harmful_prompt": True, "category": "c", "response": "a"},
            {"index": 1, "question": "q", "harmless": -2 if unsafe_second else 1, "harmful_prompt": True,
             "category": "c", "response": "b"},
        ]  # fmt: skip
        return {}, samples

    monkeypatch.setattr(ev, "evaluate_policy", fake_evaluate)
    out = ev.prompt_safety(None, None, Prompts(prompts), k=4, seed=10)
    assert calls == [10, 1010, 2010, 3010]
    assert [r["unsafe_probability"] for r in out] == [0.0, 0.5] and out[0]["mean_cost"] is None


def test_linear_probe_separates_a_separable_set_and_not_noise():
    import torch

    from saferlhfv.evaluate import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 3] > 0).float()  # one feature decides
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) >= 0.9
    noise = (torch.rand(400, generator=g) > 0.5).float()  # labels unrelated to the features
    assert 0.3 <= linear_probe_accuracy(x[:300], noise[:300], x[300:], noise[300:]) <= 0.7


def test_scorer_view_by_hand():
    from saferlhfv.diagnostics import scorer_view

    samples = [{"harmful_prompt": h} for h in (True, False, True, False)]
    view = scorer_view([1.0, 2.0, 3.0, 6.0], [4.0, -5.0, 0.0, -3.0], samples)
    assert view == {"reward_harmful": 2.0, "reward_benign": 4.0, "cost_harmful": 2.0, "cost_benign": -4.0,
                    "mean_cost": -1.0}  # fmt: skip


def test_budget_for_harmful_safety_by_hand():
    from saferlhfv.diagnostics import budget_for_harmful_safety, harmful_safety_at_budget

    ideal = {"cost_harmful": -5.0, "cost_benign": -6.0}
    comply_all = {"cost_harmful": 3.0, "cost_benign": -6.0}
    # half harmful: J = 0.5 * (s * -5 + (1 - s) * 3) + 0.5 * -6
    assert budget_for_harmful_safety(ideal, comply_all, harmful_share=0.5, harmful_safety=1.0) == pytest.approx(-5.5)
    assert budget_for_harmful_safety(ideal, comply_all, harmful_share=0.5, harmful_safety=0.75) == pytest.approx(-4.5)
    assert budget_for_harmful_safety(ideal, comply_all, harmful_share=0.5, harmful_safety=0.0) == pytest.approx(-1.5)
    # the inverse; a budget looser than comply-all asks for nothing, one tighter than the ideal for everything
    assert harmful_safety_at_budget(ideal, comply_all, harmful_share=0.5, budget=-4.5) == pytest.approx(0.75)
    assert harmful_safety_at_budget(ideal, comply_all, harmful_share=0.5, budget=0.0) == 0.0
    assert harmful_safety_at_budget(ideal, comply_all, harmful_share=0.5, budget=-7.0) == 1.0
    # a tighter budget asks for more safety
    loose, tight = (harmful_safety_at_budget(ideal, comply_all, harmful_share=0.3, budget=d) for d in (-4.0, -5.0))
    assert 0.0 < loose < tight < 1.0
