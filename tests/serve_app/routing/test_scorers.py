"""Scorers and verifiers: pure functions, milliseconds; their registries match the names the config takes."""

import math
import typing

import pytest

from serve_app.config import FeatureName, ScorerName, VerifierName
from serve_app.routing.scorers import FEATURES, LEARNED, SCORERS, VERIFIERS, mean_prob, min_prob, tail_mean_prob


def test_every_name_the_config_takes_is_registered_and_no_other():
    assert set(typing.get_args(ScorerName)) == {*SCORERS, LEARNED}
    assert set(typing.get_args(VerifierName)) == set(VERIFIERS)
    assert set(typing.get_args(FeatureName)) == set(FEATURES)


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
