"""Scorers and the cascade decision: pure functions, milliseconds."""

import math

import pytest

from serve_app.routing.cascade import decide
from serve_app.routing.scorers import SCORERS, mean_prob, min_prob, tail_mean_prob


def test_mean_prob_is_geometric_mean_of_token_probabilities():
    assert mean_prob([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)


def test_min_prob_is_the_least_likely_token():
    assert min_prob([math.log(0.9), math.log(0.1), math.log(0.8)]) == pytest.approx(0.1)


def test_tail_mean_prob_lies_between_min_and_mean():
    logprobs = [math.log(p) for p in (0.9, 0.95, 0.2, 0.85, 0.9, 0.99, 0.5, 0.9, 0.92, 0.97)]
    assert min_prob(logprobs) < tail_mean_prob(logprobs) < mean_prob(logprobs)
    assert tail_mean_prob(logprobs) == pytest.approx(math.sqrt(0.2 * 0.5))


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_give_zero_for_no_tokens_and_stay_in_unit_interval(name):
    scorer = SCORERS[name]
    assert scorer([]) == 0.0
    assert 0.0 <= scorer([0.0, -0.1, -7.5]) <= 1.0


def test_confident_answer_is_kept():
    decision = decide([math.log(0.9)] * 5, "stop", mean_prob, threshold=0.5)
    assert not decision.escalate and decision.reason == "confident"
    assert decision.confidence == pytest.approx(0.9)


def test_unsure_answer_escalates():
    decision = decide([math.log(0.3)] * 5, "stop", mean_prob, threshold=0.5)
    assert decision.escalate and decision.reason == "low_confidence"


def test_threshold_is_inclusive_for_keeping():
    assert not decide([math.log(0.5)], "stop", mean_prob, threshold=0.5).escalate


def test_empty_answer_escalates():
    decision = decide([], "stop", mean_prob, threshold=0.0)
    assert decision.escalate and decision.reason == "empty_answer"
