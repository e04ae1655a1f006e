"""A request's life around its route: its ledger and ingress span opened before routing, and its
metrics and span end recorded once the answer has been consumed (or at once when routing fails).

Pure: the router, the metrics sink and the clock are injected; the deployment hands in Ray's metrics,
the tests a fake. The ledger's serving facts are written here, and only here (`watched`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from opentelemetry import context, trace

from serve_app.api import openai_format
from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest
from serve_app.config import RouterConfig
from serve_app.core.generation import GenerationChunk
from serve_app.core.ledger import Ledger
from serve_app.core.stream import RoutedStream
from serve_app.observability import tracing
from serve_app.routing.admission import check_request
from serve_app.routing.router import CascadeRouter

logger = logging.getLogger(__name__)


class MetricsSink(Protocol):
    def record(self, ledger: Ledger) -> None: ...

    def backends(self, states: dict[str, Any]) -> None: ...


class NoMetrics:
    def record(self, ledger: Ledger) -> None:
        pass

    def backends(self, states: dict[str, Any]) -> None:
        pass


class RequestLifecycle:
    def __init__(self, routes: CascadeRouter, sink: MetricsSink, defaults: RouterConfig | None = None,
                 record_content: bool = False, clock: Callable[[], float] = time.monotonic):
        """`defaults`: what a request does not set (max_tokens, the stream interval)."""
        self._routes, self._sink, self._clock = routes, sink, clock
        self._defaults, self._record_content = defaults or RouterConfig(), record_content

    async def open(self, request: ChatCompletionRequest | CompletionRequest, priority: str = "normal",
                   timeout_s: float | None = None, trace_context: dict[str, str] | None = None,
                   session_key: str | None = None) -> RoutedStream:
        """Route the request inside its trace's ingress span (a child of `trace_context`'s, if given)."""
        chat = isinstance(request, ChatCompletionRequest)
        ledger = Ledger(self._clock(), output_text=[] if self._record_content else None)
        content = None
        if self._record_content:
            content = [m.as_template_input() for m in request.messages] if chat else request.prompt_text
        span = tracing.start_request(
            "chat" if chat else "text_completion", request.model, tracing.extract(trace_context), content,
            {"max_tokens": request.requested_max_tokens, "temperature": request.temperature,
             "top_p": request.top_p, "seed": request.seed})
        try:
            check_request(priority, timeout_s)
            generation = openai_format.generation_request(request, self._defaults, session_key)
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                stream = await self._routes.open(request.model, generation, priority, timeout_s, ledger)
        except BaseException as exc:
            ledger.failed(exc)
            ledger.finish(self._clock())
            self._finish(ledger, span)
            raise
        ledger.routed(stream.routing)
        return stream.wrapped(lambda chunks: watched(_in_span(chunks, span), ledger, self._clock,
                                                     lambda done: self._finish(done, span)), span=span)

    def _finish(self, ledger: Ledger, span: trace.Span) -> None:
        try:
            self._sink.record(ledger)
            self._sink.backends(self._routes.fleet.states())
            output = None if ledger.output_text is None else "".join(ledger.output_text)
            tracing.end_request(span, ledger, output)
        except Exception:  # observability must never fail a request
            logger.exception("recording a finished request failed")


async def _in_span(chunks: AsyncIterator[GenerationChunk], span: trace.Span) -> AsyncIterator[GenerationChunk]:
    """`chunks`, each one produced with the request's span current: backends a route opens while its
    answer streams (a speculative cascade's rounds) are attempts of the same trace. The context is attached
    and detached directly (what `trace.use_span` does, without a context manager per message)."""
    current = trace.set_span_in_context(span)
    try:
        while True:
            token = context.attach(current)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            finally:
                context.detach(token)
            yield chunk
    finally:
        await chunks.aclose()


async def watched(chunks: AsyncIterator[GenerationChunk], ledger: Ledger, clock: Callable[[], float],
                  on_end: Callable[[Ledger], None]) -> AsyncIterator[GenerationChunk]:
    """`chunks` as they are, noting the first byte, the usage and how the answer ended in `ledger`;
    `on_end` runs once the stream is over, however it ends."""
    try:
        async for chunk in chunks:
            ledger.served(chunk, clock())
            yield chunk
    except BaseException as exc:
        ledger.failed(exc)
        raise
    finally:
        await chunks.aclose()  # at once, not when collected: it releases the backend's slot
        ledger.finish(clock())
        on_end(ledger)
