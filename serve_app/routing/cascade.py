"""The cascade decision: keep the cheap tier's answer, or escalate to the strong tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.routing.scorers import Scorer


@dataclass(frozen=True, slots=True)
class CascadeDecision:
    escalate: bool
    confidence: float
    reason: str


def decide(logprobs: Sequence[float], finish_reason: str | None, scorer: Scorer, threshold: float) -> CascadeDecision:
    """Escalate when the cheap answer is empty or its confidence is below `threshold`.

    An answer cut off by `max_tokens` (finish_reason "length") is judged like any other: the caller
    asked for that length, and the strong tier would be cut off at the same point.
    """
    return judged(scorer(logprobs), threshold) if logprobs else EMPTY_ANSWER


EMPTY_ANSWER = CascadeDecision(escalate=True, confidence=0.0, reason="empty_answer")


def judged(confidence: float, threshold: float) -> CascadeDecision:
    """Escalate when `confidence` (a scorer's or a verifier's) is below `threshold`."""
    if confidence < threshold:
        return CascadeDecision(escalate=True, confidence=confidence, reason="low_confidence")
    return CascadeDecision(escalate=False, confidence=confidence, reason="confident")
