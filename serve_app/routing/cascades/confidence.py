"""The `confidence` mode: the cheap answer is kept when a scorer of its own token log-probabilities
(serve_app.routing.scorers, `cascade.scorer`) reaches `cascade.threshold`, else escalated."""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.core.generation import GenerationChunk
from serve_app.core.stream import RoutedStream, Routing
from serve_app.routing.cascades.base import CascadeCall
from serve_app.routing.cascades.buffered import EMPTY_ANSWER, CascadeDecision, buffered_answer, judged
from serve_app.routing.scorers import Scorer, scorer_for


def decide(logprobs: Sequence[float], scorer: Scorer, threshold: float) -> CascadeDecision:
    """Escalate when the cheap answer is empty or its confidence is below `threshold`.

    An answer cut off by `max_tokens` (finish_reason "length") is judged like any other: the caller
    asked for that length, and the strong tier would be cut off at the same point.
    """
    return judged(scorer(logprobs), threshold) if logprobs else EMPTY_ANSWER


async def _judge(call: CascadeCall, answer: list[GenerationChunk], routing: Routing) -> tuple[CascadeDecision, Routing]:
    logprobs = [lp.logprob for chunk in answer for lp in chunk.logprobs or ()]
    return decide(logprobs, scorer_for(call.settings), call.settings.threshold), routing


async def open_answer(call: CascadeCall) -> RoutedStream:
    return await buffered_answer(call, _judge)
