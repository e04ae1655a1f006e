"""The `verified` mode: the strong tier scores the cheap answer's text in its own tokens (one prefill),
and a verifier of that verdict (serve_app.routing.scorers.VERIFIERS, `cascade.verifier`) decides
between the cheap answer and an escalation. A verdict the strong tier cannot give leaves the cheap
answer served."""

from __future__ import annotations

import dataclasses

from serve_app.core.errors import ServingError
from serve_app.core.generation import GenerationChunk
from serve_app.core.stream import RoutedStream, Routing
from serve_app.routing.cascades.base import CascadeCall, drain_verdict
from serve_app.routing.cascades.buffered import EMPTY_ANSWER, CascadeDecision, buffered_answer, judged
from serve_app.routing.scorers import VERIFIERS


async def _judge(call: CascadeCall, answer: list[GenerationChunk], routing: Routing) -> tuple[CascadeDecision, Routing]:
    text, settings = "".join(chunk.text for chunk in answer), call.settings
    if not text:
        return EMPTY_ANSWER, routing
    request = call.request
    scoring = dataclasses.replace(request, request_id=f"{request.request_id}-verify", verify_text=text,
                                  sampling={k: v for k, v in request.sampling.items() if k != "logprobs"})
    try:
        _, chunks = await call.open_tier(settings.strong_tier, scoring)
        verdict = await drain_verdict(chunks)
    except ServingError as exc:  # a client error too: e.g. the answer does not fit the strong model's context
        return (CascadeDecision(escalate=False, confidence=0.0, reason="unverified"),
                routing.model_copy(update={"fallback_reason": f"{settings.strong_tier}: {exc.code}"}))
    scores = {name: round(verify(verdict, settings.alpha), 6) for name, verify in VERIFIERS.items()}
    routing = routing.model_copy(update={"verification": scores | {"tokens": len(verdict.logprobs)}})
    return judged(scores[settings.verifier], settings.threshold), routing


async def open_answer(call: CascadeCall) -> RoutedStream:
    return await buffered_answer(call, _judge)
