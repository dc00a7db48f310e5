"""Guard model, moderation decisions and the filter-and-regenerate loop (hand-made tables and fakes)."""

from collections import Counter

import pytest
import torch

from saferlhfv.data.content import CATEGORIES, SEVERITY_NAMES
from saferlhfv.guardrail import (
    REFUSAL,
    SAFETY_INSTRUCTION,
    Guard,
    Thresholds,
    binary_metrics,
    confusion_matrix,
    decide,
    filter_and_regenerate,
    overblocking_cost,
    regeneration_seed,
    threshold_tradeoff,
)
from saferlhfv.models.factory import build_tiny_vlm
from saferlhfv.models.guard import (
    GuardModel,
    encode_guard_inputs,
    guard_loss,
    load_guard_model,
    save_guard_model,
)
from tests.helpers import CORPUS, picture, tiny_model_config

# --------------------------------------------------------------------------- decisions


def test_decide_per_severity_thresholds():
    th = Thresholds(none=0.5, minor=0.7, moderate=0.5, severe=0.0)
    assert decide(0.01, "severe", th) and decide(0.0, 3, th)  # severe: always blocked
    assert not decide(0.65, "minor", th) and decide(0.7, "minor", th)  # minor: stricter
    assert decide(0.5, "moderate", th) and not decide(0.49, 2, th)
    assert decide(0.9, "none", th) and not decide(0.3, 0, th)  # the unsafe head alone can still block
    assert th.at(1) == th.at("minor") == 0.7
    assert Thresholds.uniform(0.3).as_dict() == {
        "none": 0.3,
        "minor": 0.3,
        "moderate": 0.3,
        "severe": 0.3,
        "flagged_request": None,
    }
    # an answer to a request input moderation blocks: every level's threshold is at most flagged_request
    ctx = Thresholds(none=0.5, minor=0.7, moderate=0.5, severe=0.0, flagged_request=0.25)
    assert not decide(0.3, "minor", ctx) and decide(0.3, "minor", ctx, request_flagged=True)
    assert decide(0.25, 0, ctx, request_flagged=True) and not decide(0.24, 2, ctx, request_flagged=True)
    assert ctx.at("severe", request_flagged=True) == 0.0  # a lower level threshold stays
    assert not decide(0.3, "minor", th, request_flagged=True)  # off (None): the request changes nothing


def _row(p, level, unsafe):
    return {"p_unsafe": p, "severity_level": level, "is_unsafe": unsafe}


TABLE = [
    _row(0.95, 2, True),
    _row(0.80, 1, True),
    _row(0.60, 1, True),  # minor at 0.6: passes the stricter minor threshold
    _row(0.10, 3, True),  # low p but predicted severe: blocked by policy, missed by the plain classifier
    _row(0.55, 0, False),  # a false positive at 0.5
    _row(0.20, 0, False),
    _row(0.05, 0, False),
    _row(0.40, 2, False),
]


def test_threshold_tradeoff_plain_classifier_by_hand():
    out = threshold_tradeoff(TABLE, 0.5)
    # flagged: 0.95, 0.80, 0.60, 0.55 -> tp 3, fp 1, fn 1, tn 3
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (3, 1, 1, 3)
    assert out["recall"] == 0.75 and out["precision"] == 0.75 and out["false_positive_rate"] == 0.25
    assert out["threshold"] == 0.5
    # a higher threshold never flags more
    shares = [threshold_tradeoff(TABLE, t)["flagged_share"] for t in (0.0, 0.3, 0.5, 0.7, 0.9, 1.01)]
    assert shares == sorted(shares, reverse=True) and shares[0] == 1.0 and shares[-1] == 0.0


def test_threshold_tradeoff_with_per_severity_policy():
    out = threshold_tradeoff(TABLE, 0.5, per_severity=Thresholds())
    # policy: 0.95 (mod) y, 0.80 (minor, >=0.7) y, 0.60 (minor) n, 0.10 (severe) y, 0.55 (none) y, 0.40 (mod) n
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (3, 1, 1, 3)
    strict = threshold_tradeoff(TABLE, 0.99, per_severity=Thresholds())
    assert strict["tp"] == 1  # only the severe row is left: severe stays at 0
    assert strict["fp"] == 0


def test_binary_metrics_and_confusion_by_hand():
    m = binary_metrics([True, True, False, False], [True, False, True, False])
    assert m["f1"] == 0.5 and m["accuracy"] == 0.5 and m["false_positive_rate"] == 0.5
    empty = binary_metrics([False, False], [False, False])
    assert empty["recall"] != empty["recall"]  # NaN: no positives
    assert threshold_tradeoff([_row(0.1, 0, False)], 0.5)["recall"] is None
    assert confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3) == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_overblocking_cost_by_hand():
    table = [
        {"p_unsafe": 0.9, "severity_level": 2, "harmful_prompt": True, "helpful": 3, "harmless": -2},
        {"p_unsafe": 0.2, "severity_level": 2, "harmful_prompt": True, "helpful": 3, "harmless": -2},
        {"p_unsafe": 0.7, "severity_level": 0, "harmful_prompt": False, "helpful": 3, "harmless": 2},
        {"p_unsafe": 0.1, "severity_level": 0, "harmful_prompt": False, "helpful": 1, "harmless": 2},
    ]
    out = overblocking_cost(table, 0.5)
    assert out["benign_blocked"] == 0.5 and out["harmful_blocked"] == 0.5
    assert out["benign_helpfulness_before"] == 2.0 and out["benign_helpfulness"] == 0.5
    assert out["harmful_safety"] == 0.5
    none = overblocking_cost(table, 1.01)
    assert none["benign_helpfulness"] == 2.0 and none["harmful_safety"] == 0.0


# --------------------------------------------------------------------------- filter and regenerate


class FakePolicy:
    """Answers "bad-<q>-<seed>" for questions in ``bad`` for their first ``fix_after[q]`` askings, else "good"."""

    def __init__(self, bad=(), fix_after=None):
        self.bad, self.fix_after, self.calls, self.asked = set(bad), fix_after or {}, [], Counter()

    def __call__(self, images, questions, *, seed=0):
        self.calls.append(list(questions))
        out = []
        for q in questions:
            base = q.removeprefix(SAFETY_INSTRUCTION + " ")
            self.asked[base] += 1
            bad = base in self.bad and self.asked[base] <= self.fix_after.get(base, 10**6)
            out.append(f"bad-{base}-{seed}" if bad else "good")
        return out


class FakeGuard:
    """Flags answers that start with "bad"; flags inputs listed in ``bad_inputs``."""

    def __init__(self, bad_inputs=()):
        self.bad_inputs, self.seen = set(bad_inputs), []

    def moderate(self, images, questions, responses=None):
        self.seen.append((list(questions), None if responses is None else list(responses)))
        if responses is None:
            flags = [q in self.bad_inputs for q in questions]
        else:
            flags = [r.startswith("bad") for r in responses]
        return [{"p_unsafe": float(f), "severity_level": 2 * int(f), "flagged": f} for f in flags]


def _prompts(n):
    return [{"image": picture((10 * i, 20, 30)), "question": f"q{i}"} for i in range(n)]


def test_a_round_regenerates_only_flagged_items():
    policy = FakePolicy(bad={"q1", "q3"}, fix_after={"q1": 1, "q3": 3})
    res = filter_and_regenerate(policy, FakeGuard(), _prompts(5), rounds=5)
    assert policy.calls[0] == ["q0", "q1", "q2", "q3", "q4"]
    assert res.regenerated == [[0, 1, 2, 3, 4], [1, 3], [3], [3]]
    assert policy.calls[1:] == [["q1", "q3"], ["q3"], ["q3"]]
    # untouched items keep their answer; a fixed item keeps its fixed answer
    assert res.responses[1][1] == "good" and res.responses[1][3].startswith("bad-q3")
    assert all(res.responses[k][0] == "good" for k in range(len(res.responses)))
    assert res.clean_after == 3 and res.rounds_run == 3
    assert res.generations() == [5, 2, 1, 1, 0, 0]
    assert [len(res.flagged(k)) for k in range(6)] == [2, 1, 1, 0, 0, 0]
    assert res.at(5) == res.at(3)  # past the early stop: the last state
    # new samples use new seeds; a redraw no less unsafe is written down but not kept
    assert res.drawn[1] == ["good", "bad-q3-1000"] and res.drawn[0][3] == "bad-q3-0"
    assert res.responses[1][3] == res.responses[2][3] == "bad-q3-0"


class GradedGuard(FakeGuard):
    """Output moderation: the answer's ``p_unsafe`` is the number after its last '-' (flagged from 0.5)."""

    def moderate(self, images, questions, responses=None):
        ps = [float(r.rsplit("-", 1)[1]) for r in responses]
        return [{"p_unsafe": p, "severity_level": 2, "flagged": p >= 0.5} for p in ps]


def test_a_flagged_item_keeps_its_least_unsafe_answer():
    """The served answer of an item flagged in every round is the one the guard found least unsafe."""
    draws = iter(["x-0.7", "x-0.9", "x-0.6", "x-0.6", "x-0.8"])
    res = filter_and_regenerate(lambda ims, qs, seed=0: [next(draws)], GradedGuard(), _prompts(1), rounds=4)
    assert res.drawn == [["x-0.7"], ["x-0.9"], ["x-0.6"], ["x-0.6"], ["x-0.8"]]
    assert [r[0] for r in res.responses] == ["x-0.7", "x-0.7", "x-0.6", "x-0.6", "x-0.6"]
    assert res.flagged(4) == [0] and res.final() == ["x-0.6"]
    # a redraw the guard passes is kept whatever it scores against the flagged one
    draws = iter(["x-0.9", "x-0.4"])
    res = filter_and_regenerate(lambda ims, qs, seed=0: [next(draws)], GradedGuard(), _prompts(1), rounds=3)
    assert res.final() == ["x-0.4"] and res.clean_after == 1


def test_a_fully_safe_batch_stops_early():
    policy, guard = FakePolicy(), FakeGuard()
    res = filter_and_regenerate(policy, guard, _prompts(4), rounds=5)
    assert len(policy.calls) == 1 and len(guard.seen) == 1
    assert res.rounds_run == 0 and res.clean_after == 0
    assert res.generations() == [4, 0, 0, 0, 0, 0]
    assert res.final() == ["good"] * 4


def test_flags_that_remain_after_the_last_round():
    res = filter_and_regenerate(FakePolicy(bad={"q0"}), FakeGuard(), _prompts(2), rounds=2)
    assert res.clean_after is None and res.rounds_run == 2
    assert res.generations() == [2, 1, 1]
    assert res.final()[0].startswith("bad") and res.final(fallback=REFUSAL)[0] == REFUSAL


def test_input_moderation_refuses_without_calling_the_policy():
    policy, guard = FakePolicy(bad={"q2"}, fix_after={"q2": 1}), FakeGuard(bad_inputs={"q0"})
    res = filter_and_regenerate(policy, guard, _prompts(3), rounds=3, input_moderation=True)
    assert all("q0" not in c for c in policy.calls)
    assert res.responses[0][0] == REFUSAL and res.decisions[0][0]["blocked_at_input"]
    assert not res.decisions[0][0]["flagged"]
    assert res.input_decisions[0]["flagged"] and not res.input_decisions[1]["flagged"]
    assert res.regenerated == [[1, 2], [2]]
    # custom refusal; everything blocked -> the policy is never called
    policy2 = FakePolicy()
    res2 = filter_and_regenerate(policy2, FakeGuard({"q0", "q1"}), _prompts(2), input_moderation=True, refusal="no.")
    assert policy2.calls == [] and res2.final() == ["no.", "no."] and res2.generations()[0] == 0


def test_safety_instruction_only_on_regeneration_and_guard_reads_the_original_question():
    policy, guard = FakePolicy(bad={"q0"}, fix_after={"q0": 1}), FakeGuard()
    filter_and_regenerate(policy, guard, _prompts(2), rounds=2, safety_instruction=True)
    assert policy.calls[0] == ["q0", "q1"]
    assert policy.calls[1] == [f"{SAFETY_INSTRUCTION} q0"]
    assert guard.seen[1][0] == ["q0"]


def test_filter_can_start_from_given_answers():
    policy = FakePolicy()
    res = filter_and_regenerate(policy, FakeGuard(), _prompts(3), rounds=2, responses=["good", "bad-x", "good"])
    assert policy.calls == [["q1"]]  # round 0 used the given answers; only the flagged one is redrawn
    assert res.responses[0] == ["good", "bad-x", "good"] and res.final() == ["good"] * 3
    with pytest.raises(ValueError, match="first answers"):
        filter_and_regenerate(policy, FakeGuard(), _prompts(3), responses=["good"])


def test_an_item_seeded_policy_redraws_an_item_with_its_own_seed_whatever_else_is_redrawn():
    """Two guards that flag different sets draw the same new answer for an item both flag (paired)."""

    class SeedRecorder(FakePolicy):
        item_seeded = True

        def __call__(self, images, questions, *, seed=0, item_seeds=None):
            self.calls.append((list(questions), item_seeds))
            return [f"good-{s}" for s in item_seeds]  # only regenerations reach it (round 0 is given)

    first = ["bad-q0", "bad-q1", "good"]
    narrow, wide = SeedRecorder(), SeedRecorder()
    only_q1 = filter_and_regenerate(narrow, FakeGuard(), _prompts(3), rounds=1, responses=["good", "bad-q1", "good"])
    both = filter_and_regenerate(wide, FakeGuard(), _prompts(3), rounds=1, responses=first)
    assert narrow.calls[0][0] == ["q1"] and wide.calls[0][0] == ["q0", "q1"]
    assert narrow.calls[0][1] == [regeneration_seed(0, 1, 1)] == wide.calls[0][1][1:]
    assert only_q1.final()[1] == both.final()[1] != both.final()[0]
    assert regeneration_seed(0, 1, 1) != regeneration_seed(0, 2, 1) != regeneration_seed(1, 1, 1)


def test_filter_rejects_a_policy_that_drops_answers():
    with pytest.raises(ValueError, match="answers"):
        filter_and_regenerate(lambda ims, qs, seed=0: ["x"], FakeGuard(), _prompts(2), rounds=1)


# --------------------------------------------------------------------------- the guard model


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def guard_and_processor(request):
    backbone, processor = build_tiny_vlm(tiny_model_config(), CORPUS, arch=request.param)
    return GuardModel(backbone, seed=3).eval(), processor


def _inputs(processor, responses):
    images = [picture((40 * i % 255, 90, 200)) for i in range(len(responses))]
    questions = ["what is the best way to give these to a child?"] * len(responses)
    return encode_guard_inputs(processor, images, questions, responses)


def test_guard_heads_and_modes(guard_and_processor):
    model, processor = guard_and_processor
    responses = [None, "crush the pills and mix them into a drink.", "", "candy is a fine treat."]
    batch = _inputs(processor, responses)
    with torch.no_grad():
        out = model(**batch)
    assert out.unsafe_logit.shape == (4,)
    assert out.category_logits.shape == (4, len(CATEGORIES))
    assert out.severity_logits.shape == (4, len(SEVERITY_NAMES))
    assert ((out.p_unsafe > 0) & (out.p_unsafe < 1)).all()
    # the heads read the last real token of each row (right padding)
    assert out.end_index.tolist() == (batch["attention_mask"].sum(1) - 1).tolist()
    # an input row (no answer) reads differently from an output row with the same picture and question
    with torch.no_grad():
        alone = [model(**_inputs(processor, [r])).unsafe_logit for r in (None, "candy is a fine treat.")]
    assert not torch.allclose(alone[0], alone[1])


def test_guard_score_does_not_depend_on_batch_padding(guard_and_processor):
    model, processor = guard_and_processor
    responses = [None, "the picture shows a red knife on a blue table, I can't help with that."]
    with torch.no_grad():
        together = model(**_inputs(processor, responses)).unsafe_logit
        images = [picture((40 * i % 255, 90, 200)) for i in range(2)]
        alone = torch.cat(
            [
                model(
                    **encode_guard_inputs(
                        processor, [images[i]], ["what is the best way to give these to a child?"], [r]
                    )
                ).unsafe_logit
                for i, r in enumerate(responses)
            ]
        )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_guard_row_lengths_count_the_text_tokens_a_row_encodes_to(guard_and_processor):
    """The lengths the guard's batches are grouped by: a row's encoded length less a constant of its mode
    (image tokens and chat template; a token or two either way where the tokenizer merges across the
    template's seams), so grouping by them groups by padded size."""
    from saferlhfv.train.guard.data import guard_row_lengths

    _, processor = guard_and_processor
    rows = {
        "question": ["what is this?", "how do i give these to a child without anyone noticing at all?"] * 2,
        "response": ["", "", "candy is a fine treat.", "i can't help with that, it is not safe for a child at all."],
    }
    lengths = guard_row_lengths(processor, rows)
    encoded = [
        int(encode_guard_inputs(processor, [picture((9, 90, 200))], [q], [r])["attention_mask"].sum())
        for q, r in zip(rows["question"], rows["response"])
    ]
    overhead = [e - n for e, n in zip(encoded, lengths)]
    assert abs(overhead[0] - overhead[1]) <= 2 and abs(overhead[2] - overhead[3]) <= 2  # input rows, output rows
    assert -2 <= overhead[2] - overhead[0] <= 4  # an answer adds its end-of-turn tokens
    assert lengths[0] < lengths[1] < lengths[3] and lengths[0] < lengths[2]


def test_guard_loss_trains_all_heads(guard_and_processor):
    model, processor = guard_and_processor
    model.train()
    batch = _inputs(processor, [None, "crush the pills and mix them into a drink."])
    out = model(**batch)
    loss, stats = guard_loss(out, torch.tensor([0, 1]), torch.tensor([3, 8]), torch.tensor([0, 2]))
    loss.backward()
    for head in model.heads():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert set(stats) == {"bce", "ce_category", "ce_severity", "unsafe_acc"}
    model.zero_grad()
    # category only on unsafe rows: a batch without unsafe rows has a zero category term
    out = model(**batch)
    _, stats = guard_loss(
        out, torch.tensor([0, 0]), torch.tensor([3, 8]), torch.tensor([0, 0]), category_on_unsafe_only=True
    )
    assert stats["ce_category"] == 0.0
    model.eval()


def test_guard_save_load_round_trip_and_guard_wrapper(guard_and_processor, tmp_path):
    model, processor = guard_and_processor
    batch = _inputs(processor, [None, "candy is a fine treat."])
    save_guard_model(model, processor, tmp_path / "g")
    loaded, loaded_processor = load_guard_model(tmp_path / "g")
    again = _inputs(loaded_processor, [None, "candy is a fine treat."])
    with torch.no_grad():
        a, b = model(**batch), loaded(**again)
    for x, y in ((a.unsafe_logit, b.unsafe_logit), (a.category_logits, b.category_logits)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    guard = Guard.load(tmp_path / "g", Thresholds.uniform(0.0))
    verdicts = guard.moderate([picture()] * 3, ["q one", "q two", "q three"], [None, "an answer.", ""])
    assert len(verdicts) == 3 and all(v["flagged"] for v in verdicts)  # threshold 0 flags everything
    assert {"p_unsafe", "category", "severity", "severity_level", "severity_probs", "flagged"} <= set(verdicts[0])
    assert verdicts[0]["category"] in CATEGORIES and verdicts[0]["severity"] in SEVERITY_NAMES


class ScriptedGuard(Guard):
    """A :class:`Guard` whose heads are a table: ``p_unsafe`` by question (input) or by answer (output)."""

    def __init__(self, p_input, p_output, thresholds):
        super().__init__(torch.nn.Linear(1, 1), processor=None, thresholds=thresholds)
        self.p_input, self.p_output, self.input_calls = p_input, p_output, 0

    def scores(self, images, questions, responses=None, *, with_objects=False):
        if responses is None:
            self.input_calls += 1
        p = torch.tensor(
            [
                self.p_input[q] if not r else self.p_output[r]
                for q, r in zip(questions, responses or [None] * len(questions))
            ]
        )
        sev = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * len(p))  # moderate: threshold 0.5
        out = (p, torch.full((len(p), len(CATEGORIES)), 1 / len(CATEGORIES)), sev)
        return (*out, torch.full((len(p),), -1)) if with_objects else out


def test_output_moderation_reads_the_request_verdict():
    """An answer to a request input moderation blocks is flagged from flagged_request on; others at 0.5."""
    th = Thresholds(flagged_request=0.25)
    guard = ScriptedGuard({"harmful q": 0.9, "benign q": 0.1}, {"a": 0.3, "b": 0.6}, th)
    qs, answers = ["harmful q", "benign q", "harmful q", "benign q"], ["a", "a", "b", None]
    out = guard.moderate([picture()] * 4, qs, answers)
    assert [v["flagged"] for v in out] == [True, False, True, False]
    assert [v.get("request_flagged") for v in out] == [True, False, True, None]  # no answer: input moderation
    assert out[0]["threshold"] == 0.25 and out[1]["threshold"] == 0.5
    assert guard.input_calls == 1  # one extra pass over the requests that have an answer
    guard.moderate([picture()] * 2, ["harmful q", "benign q"], ["b", "b"])
    assert guard.input_calls == 1  # requests read before are not read again (the filter's rounds)
    fresh = ScriptedGuard({**guard.p_input, "new q": 0.8}, guard.p_output, th)
    mixed = fresh.moderate([picture()] * 2, ["new q", "new q"], [None, "a"])
    assert fresh.input_calls == 0 and mixed[1]["flagged"]  # an input row of the same call is that reading
    off = ScriptedGuard(guard.p_input, guard.p_output, Thresholds())
    assert [v["flagged"] for v in off.moderate([picture()] * 4, qs, answers)] == [False, False, True, False]
    assert off.input_calls == 0 and "request_flagged" not in off.moderate([picture()], ["harmful q"], ["a"])[0]


def test_object_head_grounding_term_and_round_trip(tmp_path):
    backbone, processor = build_tiny_vlm(tiny_model_config(), CORPUS)
    model = GuardModel(backbone, n_objects=5, seed=0)
    batch = _inputs(processor, [None, "candy is a fine treat."])
    out = model(**batch)
    assert out.object_logits.shape == (2, 5)
    args = (out, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 1]))
    _, without = guard_loss(*args)
    loss, stats = guard_loss(*args, objects=torch.tensor([3, -100]), object_weight=0.5)
    assert "ce_object" in stats and "ce_object" not in without
    loss.backward()
    assert model.object_head.weight.grad.abs().sum() > 0
    save_guard_model(model.eval(), processor, tmp_path / "g")
    loaded, _ = load_guard_model(tmp_path / "g")
    torch.testing.assert_close(loaded.object_head.weight, model.object_head.weight, rtol=0, atol=0)


def test_threshold_slider_callback_is_the_library_function():
    widgets = pytest.importorskip("ipywidgets")
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05)
    explorer = widgets.interactive(
        threshold_tradeoff, table=widgets.fixed(TABLE), threshold=slider, per_severity=widgets.fixed(None)
    )
    assert explorer.result == threshold_tradeoff(TABLE, 0.5)
    slider.value = 0.9
    assert explorer.result == threshold_tradeoff(TABLE, 0.9) and explorer.result["tp"] == 1
