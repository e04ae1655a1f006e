"""One backend (an engine version's replicas, or an external API) as the router tries it: admitted by
load shedding, let through by its circuit breaker, bounded by its dispatch, first-token and total
timeouts, metered and traced. `open` returns once the first chunk has arrived, so that every failure
before the first byte is raised there, where the caller can still fall back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable

from serve_app.core.errors import (
    BackendTimeout,
    CircuitOpen,
    ClientError,
    NoLiveReplica,
    Overloaded,
    ServerError,
    ServingError,
)
from serve_app.core.generation import Accepted, Backend, GenerationChunk, GenerationRequest
from serve_app.core.ledger import Attempt, Ledger
from serve_app.observability import tracing
from serve_app.observability.metering import FREE, Price
from serve_app.routing.admission import Ticket, TierLoad
from serve_app.routing.circuit_breaker import CircuitBreaker


def is_retryable(error: BaseException) -> bool:
    """Worth another try at the same backend: it failed, but not by being overloaded, known broken
    (open circuit, no live replica) or slow (the timeout already spent the caller's patience); never a
    client error."""
    return isinstance(error, ServerError) and not isinstance(
        error, (Overloaded, CircuitOpen, BackendTimeout, NoLiveReplica))


class GuardedBackend:
    """A backend behind load shedding and a circuit breaker, with dispatch, first-token and total timeouts.
    Each try is an `Attempt` in the request's ledger and a span in its trace."""

    def __init__(self, name: str, backend: Backend, breaker: CircuitBreaker, load: TierLoad,
                 first_token_timeout_s: float, total_timeout_s: float, dispatch_timeout_s: float | None = None,
                 price: Price = FREE, clock: Callable[[], float] = time.monotonic, version: str | None = None):
        self.name = name
        """The backend's label: a tier (tier@version when it has several versions) or an external API."""
        self.version = version
        self.breaker = breaker
        self.load = load
        self._backend = backend
        self._first_token_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s
        self._dispatch_timeout_s = dispatch_timeout_s
        self._price = price
        self._clock = clock

    def reserve(self, request: GenerationRequest, priority: str = "normal") -> Ticket:
        """Admit a multi-pass answer once (the speculative cascade's): its ticket holds its place in the
        tier's load until `release`, and its passes (`open(..., ticket=...)`) are not admitted again."""
        self._admit(priority)
        return self.load.started(request.sampling.get("max_tokens"), reserved=True)

    def release(self, ticket: Ticket, completed: bool) -> None:
        self.load.finished(ticket, completed)

    def _admit(self, priority: str) -> None:
        admission = self.load.admit(priority)  # before the breaker: a shed request must not use up its probe
        if not admission.admitted:
            raise Overloaded(f"tier {self.name!r} is at capacity (expected wait "
                             f"{admission.estimated_wait_s:.1f} s)", retry_after_s=admission.retry_after_s)
        self._allow()

    def _allow(self) -> None:
        if not self.breaker.allow():
            raise CircuitOpen(f"tier {self.name!r} is failing; its circuit is open for "
                              f"{self.breaker.retry_after_s():.0f} s more", retry_after_s=self.breaker.retry_after_s())

    async def open(self, request: GenerationRequest, priority: str = "normal", caller_deadline: float = math.inf,
                   ledger: Ledger | None = None, ticket: Ticket | None = None) -> AsyncIterator[GenerationChunk]:
        """Admit, start a generation and wait for its first chunk, so that failures are raised here.
        `caller_deadline` (event-loop time) is the caller's own bound; the tier's timeouts apply within it.
        With the `ticket` of a reserved answer (`reserve`), the pass is part of an admitted answer: not
        admitted again, and not bound by the first-token timeout, since a queue it waits in is the one its
        admission accounted for (the total timeout and the caller's deadline still apply)."""
        attempt = (ledger or Ledger(self._clock())).attempt(self.name, self._clock())
        span = tracing.start_attempt(attempt)
        request = dataclasses.replace(request, trace_context=tracing.carrier(span))
        try:
            return await self._open(request, priority, caller_deadline, attempt, span, ticket)
        except BaseException as exc:
            self._end(attempt, span, exc)
            raise

    async def _open(self, request: GenerationRequest, priority: str, caller_deadline: float,
                    attempt: Attempt, span, reserved: Ticket | None) -> AsyncIterator[GenerationChunk]:
        if reserved is None:
            self._admit(priority)
        else:
            self._allow()
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = min(now + self._total_timeout_s, caller_deadline)
        first_token_deadline = deadline if reserved else min(deadline, now + self._first_token_timeout_s)
        # With room in the batch, a live replica takes the request at once; waiting longer means it has none.
        room = self.load.in_flight <= self.load.batch if reserved else self.load.slot_free()
        dispatch_deadline = now + self._dispatch_timeout_s \
            if self._dispatch_timeout_s is not None and room else math.inf
        if reserved is None:
            ticket = self.load.started(request.sampling.get("max_tokens"))
        else:
            ticket = reserved
            if ticket.first_token_at is None:
                ticket.started_at = self._clock()  # its TTFT is its first pass's
        stream = self._backend(request)
        first = None
        try:
            async with asyncio.timeout_at(min(first_token_deadline, dispatch_deadline)):
                first = await anext(stream)
            if isinstance(first, Accepted):
                async with asyncio.timeout_at(first_token_deadline):
                    first = await anext(stream)
        except ClientError:
            self.breaker.record_success()  # the backend answered; the request was at fault
            await self._close(stream, ticket, completed=False)
            raise
        except (ServingError, StopAsyncIteration, TimeoutError) as exc:
            self._judge(exc, caller_deadline, ticket.queued and not ticket.reserved)
            await self._close(stream, ticket, completed=False)
            if isinstance(exc, TimeoutError) and first is None and loop.time() >= dispatch_deadline:
                raise NoLiveReplica(f"no replica of tier {self.name!r} took the request within "
                                    f"{self._dispatch_timeout_s:g} s") from None
            raise self._server_error(exc, "first token") from None
        except BaseException:  # cancelled: the caller went away, the backend is not at fault
            self.breaker.abandon()
            await self._close(stream, ticket, completed=False)
            raise
        self.breaker.record_success()
        if ticket.first_token_at is None:
            self.load.first_token(ticket)
        attempt.first_token_s = self._clock()
        _count(attempt, first)
        if not ticket.reserved:
            ticket.produced = first.completion_tokens
        return self._rest(first, stream, deadline, caller_deadline, ticket, attempt, span)

    async def _close(self, stream: AsyncIterator[GenerationChunk], ticket: Ticket, completed: bool) -> None:
        if not ticket.reserved:  # a reserved answer's ticket ends with the answer (`release`)
            self.load.finished(ticket, completed)
        await stream.aclose()

    def _end(self, attempt: Attempt, span, error: BaseException | None) -> None:
        attempt.finished_s = self._clock()
        attempt.cost_usd = self._price.of(attempt.input_tokens, attempt.output_tokens, attempt.replica_seconds)
        if error is not None:
            attempt.error = getattr(error, "code", None) or "cancelled"
        tracing.end_attempt(span, attempt)

    async def _rest(self, first: GenerationChunk, stream: AsyncIterator[GenerationChunk], deadline: float,
                    caller_deadline: float, ticket: Ticket, attempt: Attempt, span) -> AsyncIterator[GenerationChunk]:
        completed, error = False, None
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    completed = True
                    return
                except (ServerError, TimeoutError) as exc:
                    self._judge(exc, caller_deadline, ticket.queued and not ticket.reserved)
                    error = self._server_error(exc, "answer")
                    raise error from None
                if not ticket.reserved:
                    ticket.produced = chunk.completion_tokens
                _count(attempt, chunk)
                yield chunk
        except BaseException as exc:
            error = error or exc
            raise
        finally:
            await self._close(stream, ticket, completed)
            self._end(attempt, span, None if completed else error or GeneratorExit())

    def _judge(self, exc: BaseException, caller_deadline: float, queued: bool) -> None:
        """Count a failure against the backend only when the backend itself failed. Overload is not a fault:
        neither a refusal at capacity (its replicas' queues full) nor a timeout of a request that started
        behind a full batch (the service's own queue made it late) trips the breaker; nor does the
        caller's own deadline running out."""
        timed_out = isinstance(exc, TimeoutError)
        if isinstance(exc, Overloaded) or (timed_out and queued) or \
                (timed_out and asyncio.get_running_loop().time() >= caller_deadline):
            self.breaker.abandon()
        else:
            self.breaker.record_failure()

    def _server_error(self, exc: BaseException, stage: str) -> ServingError:
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"tier {self.name!r} timed out waiting for the {stage}")
        if isinstance(exc, StopAsyncIteration):
            return ServerError(f"tier {self.name!r} ended the stream without output")
        return exc


def _count(attempt: Attempt, chunk: GenerationChunk) -> None:
    attempt.input_tokens, attempt.output_tokens = chunk.prompt_tokens, chunk.completion_tokens
    attempt.replica_seconds = chunk.replica_seconds
