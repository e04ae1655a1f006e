"""The confidence mode's decision: a pure function, milliseconds; every mode is registered by its config name."""

import math
import typing

import pytest

from serve_app.config import CascadeMode
from serve_app.routing.cascades import MODES
from serve_app.routing.cascades.confidence import decide
from serve_app.routing.scorers import mean_prob


def test_every_mode_the_config_takes_is_registered_and_no_other():
    assert set(MODES) == set(typing.get_args(CascadeMode))


def test_confident_answer_is_kept():
    decision = decide([math.log(0.9)] * 5, mean_prob, threshold=0.5)
    assert not decision.escalate and decision.reason == "confident"
    assert decision.confidence == pytest.approx(0.9)


def test_unsure_answer_escalates():
    decision = decide([math.log(0.3)] * 5, mean_prob, threshold=0.5)
    assert decision.escalate and decision.reason == "low_confidence"


def test_threshold_is_inclusive_for_keeping():
    assert not decide([math.log(0.5)], mean_prob, threshold=0.5).escalate


def test_empty_answer_escalates():
    decision = decide([], mean_prob, threshold=0.0)
    assert decision.escalate and decision.reason == "empty_answer"
