"""The cascade evaluation arithmetic on a hand-computed sample, and the answer checks."""


import pytest

from serve_app.analysis.cascade_eval import (
    Answered,
    accuracies,
    apgr,
    at_threshold,
    calls_to_recover,
    correct,
    random_routing_accuracy,
    sweep,
    threshold_for_quality,
    threshold_for_share,
)

# cheap accuracy 2/4, strong 3/4: a gap of 0.25
SAMPLE = [
    Answered(0.9, cheap_correct=True, strong_correct=True, cheap_latency_s=1, strong_latency_s=2, cheap_cost_usd=1, strong_cost_usd=10),
    Answered(0.8, cheap_correct=False, strong_correct=True, cheap_latency_s=1, strong_latency_s=2, cheap_cost_usd=1, strong_cost_usd=10),
    Answered(0.6, cheap_correct=True, strong_correct=False, cheap_latency_s=1, strong_latency_s=2, cheap_cost_usd=1, strong_cost_usd=10),
    Answered(0.3, cheap_correct=False, strong_correct=True, cheap_latency_s=1, strong_latency_s=2, cheap_cost_usd=1, strong_cost_usd=10),
]


def test_the_sweep_replays_the_cascade_at_every_distinct_threshold():
    assert accuracies(SAMPLE) == (0.5, 0.75)
    curve = sweep(SAMPLE)
    assert [p.threshold for p in curve][:4] == pytest.approx([0.0, 0.45, 0.7, 0.85])
    assert [(p.strong_share, p.accuracy, p.pgr) for p in curve] == [
        (0.0, 0.5, 0.0), (0.25, 0.75, 1.0), (0.5, 0.5, 0.0), (0.75, 0.75, 1.0), (1.0, 0.75, 1.0)]
    point = at_threshold(SAMPLE, 0.45)  # D escalates: every prompt pays the cheap answer, D the strong one too
    assert point.mean_latency_s == 1.5 and point.mean_cost_usd == 3.5


def test_apgr_cpt_and_the_random_baseline():
    curve = sweep(SAMPLE)
    assert apgr(curve) == pytest.approx(0.125 + 0.125 + 0.125 + 0.25)
    assert calls_to_recover(curve, 0.5) == 0.25 and calls_to_recover(curve, 0.8) == 0.25
    assert random_routing_accuracy(SAMPLE, 0.5) == 0.625
    with pytest.raises(ValueError, match="from no strong calls"):
        apgr(curve[1:])


def test_no_gap_to_recover_is_an_error():
    with pytest.raises(ValueError, match="not better"):
        sweep([Answered(0.5, True, False)])


def test_calibration_for_a_share_or_a_quality_target():
    assert threshold_for_share(SAMPLE, 0.5).threshold == pytest.approx(0.7)
    assert threshold_for_share(SAMPLE, 0.3).strong_share == 0.25
    assert threshold_for_quality(SAMPLE, accuracy=0.75).threshold == pytest.approx(0.45)
    assert threshold_for_quality(SAMPLE, recovered=0.5).strong_share == 0.25
    with pytest.raises(ValueError, match="no threshold"):
        threshold_for_quality(SAMPLE, accuracy=0.9)


@pytest.mark.parametrize("check, answer, expected, ok", [
    ("number", "The answer is 12.", "12", True),
    ("number", "It is 1,200 in all", "1200", True),
    ("number", "7 + 5 = 11", "12", False),
    ("number", "5 + 6 = 11. Next, 7 + 8 = 15", "11", True),
    ("mentions", "The capital of Japan is Tokyo.", "Tokyo", True),
    ("mentions", "Tokyoites like it", "Tokyo", False),
    ("label", "Positive, not negative.", "positive", True),
    ("label", "I would say negative.", "positive", False),
    ("exact", " YES. ", "YES", True),
    ("exact", "yes", "YES", False),
])
def test_answer_checks(check, answer, expected, ok):
    assert correct(check, answer, expected) is ok
