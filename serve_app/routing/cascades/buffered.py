"""What the buffered modes (confidence, verified) share: the cheap tier answers in full, the answer is
judged, and then either replayed or dropped for the strong tier's answer from its start. A structured
answer (tools, an output format) is checked first (serve_app.routing.validity): one that fails its check
escalates with reason `invalid_<check>`, before any scorer or verifier.

A client therefore never sees part of one answer followed by another, at the price of a time to first
token on `auto` equal to the cheap tier's whole generation time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_app.config import AUTO_ROUTE
from serve_app.core.errors import ClientError, ServingError
from serve_app.core.generation import GenerationChunk, assembled_tool_calls
from serve_app.core.stream import RoutedStream, Routing, from_list
from serve_app.routing import validity
from serve_app.routing.cascades.base import CascadeCall


@dataclass(frozen=True, slots=True)
class CascadeDecision:
    escalate: bool
    confidence: float
    reason: str


EMPTY_ANSWER = CascadeDecision(escalate=True, confidence=0.0, reason="empty_answer")


def judged(confidence: float, threshold: float) -> CascadeDecision:
    """Escalate when `confidence` (a scorer's or a verifier's) is below `threshold`."""
    if confidence < threshold:
        return CascadeDecision(escalate=True, confidence=confidence, reason="low_confidence")
    return CascadeDecision(escalate=False, confidence=confidence, reason="confident")


Judge = Callable[[CascadeCall, list[GenerationChunk], Routing], Awaitable[tuple[CascadeDecision, Routing]]]
"""A mode's verdict on the cheap tier's whole answer (with the routing so far, which it may annotate)."""


async def buffered_answer(call: CascadeCall, judge: Judge) -> RoutedStream:
    """The cheap answer, judged, then served or escalated. If the strong tier fails, the cheap answer
    beats no answer."""
    cheap, strong = call.settings.cheap_tier, call.settings.strong_tier
    wanted = call.request.sampling.get("logprobs")
    probe = dataclasses.replace(call.request, sampling={**call.request.sampling, "logprobs": wanted or 0})
    version, chunks = await call.open_tier(cheap, probe)
    answer = [chunk async for chunk in chunks]
    routing = Routing(route=AUTO_ROUTE, served_by=cheap, version=version)
    failed = validity.failed_check(call.request.structured, "".join(c.text for c in answer), assembled_tool_calls(answer))
    if failed is not None:  # a structured answer that fails its check is not worth a judge
        decision = CascadeDecision(escalate=True, confidence=0.0, reason=f"invalid_{failed}")
    else:
        decision, routing = await judge(call, answer, routing)
    routing = routing.model_copy(update={"escalated": decision.escalate, "reason": decision.reason,
                                         "confidence": round(decision.confidence, 6)})
    if decision.escalate:
        try:
            escalation = dataclasses.replace(call.request, request_id=f"{call.request.request_id}-{strong}")
            version, chunks = await call.open_tier(strong, escalation)
            return RoutedStream(routing.model_copy(update={"served_by": strong, "version": version}), chunks)
        except ClientError:
            raise
        except ServingError as exc:
            routing = routing.model_copy(update={"fallback_reason": f"{strong}: {exc.code}"})
    if wanted is None:  # asked for the judge only: the client did not want them
        answer = [dataclasses.replace(chunk, logprobs=None) for chunk in answer]
    return RoutedStream(routing, from_list(answer))
