"""Route a generation request to a tier, or through the cascade, over abstract backends.

No Ray here: a backend is any function returning an async stream of `GenerationChunk`s, so the
deployment hands in Ray Serve handles and the unit tests hand in fakes.

Streaming and the cascade: the `auto` route runs the cheap tier to completion and buffers its answer
until the decision, then either replays the buffer or streams the strong tier's answer from its
start. A client therefore never sees part of one answer followed by another, at the price of a
time-to-first-token on `auto` equal to the cheap tier's whole generation time.

Every route opens its stream before returning: the first chunk has arrived (or the engine raised),
so errors such as an over-long prompt still become an HTTP status rather than a broken stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve_app.cascade import decide
from serve_app.config import AUTO_ROUTE, CascadeConfig
from serve_app.errors import ModelNotFound, ServerError
from serve_app.generation import Backend, GenerationChunk, GenerationRequest
from serve_app.protocol import Routing
from serve_app.scorers import SCORERS


@dataclass(slots=True)
class RoutedStream:
    routing: Routing
    chunks: AsyncIterator[GenerationChunk]


async def _replay(first: GenerationChunk, rest: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


async def _from_list(chunks: list[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk


async def open_stream(backend: Backend, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
    """Start `backend` and wait for its first chunk, so that its errors are raised here."""
    stream = backend(request)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        raise ServerError("the engine ended the stream without output") from None
    except BaseException:
        await stream.aclose()
        raise
    return _replay(first, stream)


class CascadeRouter:
    def __init__(self, backends: dict[str, Backend], cascade: CascadeConfig, model_alias: str):
        self._backends = backends
        self._cascade = cascade
        self._scorer = SCORERS[cascade.scorer]
        self._alias = model_alias

    @property
    def routes(self) -> list[str]:
        return [AUTO_ROUTE, self._alias, *self._backends]

    def resolve(self, model: str) -> str:
        """The route a request's `model` names: a tier, or `auto` (also by the app's alias)."""
        if model in self._backends:
            return model
        if model in (AUTO_ROUTE, self._alias):
            return AUTO_ROUTE
        raise ModelNotFound(f"The model {model!r} does not exist; choose one of {self.routes}.", param="model")

    async def open(self, model: str, request: GenerationRequest) -> RoutedStream:
        route = self.resolve(model)
        if route != AUTO_ROUTE:
            return RoutedStream(Routing(route=route, served_by=route), await open_stream(self._backends[route], request))
        return await self._cascade_stream(request)

    async def _cascade_stream(self, request: GenerationRequest) -> RoutedStream:
        cheap, strong = self._cascade.cheap_tier, self._cascade.strong_tier
        wanted = request.sampling.get("logprobs")
        probe = dataclasses.replace(request, sampling={**request.sampling, "logprobs": wanted or 0})
        answer: list[GenerationChunk] = []
        async for chunk in self._backends[cheap](probe):
            answer.append(chunk)
        logprobs = [lp.logprob for chunk in answer for lp in chunk.logprobs or ()]
        decision = decide(logprobs, answer[-1].finish_reason if answer else None, self._scorer, self._cascade.threshold)
        routing = Routing(
            route=AUTO_ROUTE, served_by=strong if decision.escalate else cheap,
            escalated=decision.escalate, confidence=round(decision.confidence, 6), reason=decision.reason,
        )
        if decision.escalate:
            retry = dataclasses.replace(request, request_id=f"{request.request_id}-{strong}")
            return RoutedStream(routing, await open_stream(self._backends[strong], retry))
        if wanted is None:
            for chunk in answer:
                chunk.logprobs = None
        return RoutedStream(routing, _from_list(answer))
