"""One backend (an engine version's replicas, or an external API) as the router tries it: admitted by
load shedding, let through by its circuit breaker, bounded by its dispatch, first-token and total
timeouts, metered and traced. `open` returns once the first chunk has arrived, so that every failure
before the first byte is raised there, where the caller can still fall back.

A request's breaker pass (circuit_breaker.Pass) is held in a `with` from admission to its first token,
so every way the request can end gives a probe back. An engine version with no running replica (its
first is starting, or its only one died and Ray Serve is replacing it, as the deployment learns from
Serve) refuses at once with a Retry-After from its expected start, which never counts against its
breaker; a tier that scales from zero takes the request instead, since the request is what starts
a replica.
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
    TierStarting,
)
from serve_app.core.generation import Accepted, Backend, GenerationChunk, GenerationRequest
from serve_app.core.ledger import Attempt, Ledger
from serve_app.observability import tracing
from serve_app.observability.metering import FREE, Price
from serve_app.routing.admission import Ticket, TierLoad
from serve_app.routing.circuit_breaker import CircuitBreaker, Pass

LATE_START_RETRY_S = 5.0
"""Retry-After for a request refused by a tier whose replica is starting later than expected."""


def is_retryable(error: BaseException) -> bool:
    """Worth another try at the same backend: it failed, but not by being overloaded, known broken
    (open circuit, no live replica, starting) or slow (the timeout already spent the caller's patience);
    never a client error."""
    return isinstance(error, ServerError) and not isinstance(
        error, (Overloaded, CircuitOpen, BackendTimeout, NoLiveReplica, TierStarting))


class GuardedBackend:
    """A backend behind load shedding and a circuit breaker, with dispatch, first-token and total timeouts.
    Each try is an `Attempt` in the request's ledger and a span in its trace."""

    def __init__(self, name: str, backend: Backend, breaker: CircuitBreaker, load: TierLoad,
                 first_token_timeout_s: float, total_timeout_s: float, dispatch_timeout_s: float | None = None,
                 price: Price = FREE, clock: Callable[[], float] = time.monotonic, version: str | None = None,
                 expected_start_s: float = 0.0, scales_from_zero: bool = False):
        """`expected_start_s`: how long a new replica takes to start (an engine version's); `scales_from_zero`:
        a request to it with no replica running is what makes Ray Serve start one."""
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
        self._expected_start_s = expected_start_s
        self._scales_from_zero = scales_from_zero
        self._running: int | None = None  # as Ray Serve reports them; None: not reported, taken as serving
        self.ever_ran = True
        """A replica has run since the router started (or no count was ever reported, as for an external API)."""
        self._unready_since = clock()
        self._unspent: dict[Ticket, Pass] = {}  # reserved answers' passes, until their first pass spends one

    # Replicas, as the deployment learns them from Ray Serve -----------------------------------------

    def starts(self) -> None:
        """The router starts before the backend's replicas are known to run: none counts as running yet."""
        self._running, self.ever_ran, self._unready_since = 0, False, self._clock()

    def replicas_running(self, running: int) -> None:
        """Ray Serve's count of the backend's running replicas. A new one half-opens an open circuit (it is
        probed at once); the first after none restores the admission limit (the broken promises were the
        lost replica's, not the load's)."""
        before, self._running = self._running, running
        self.ever_ran = self.ever_ran or running > 0
        if running == 0 and before != 0:
            self._unready_since = self._clock()
        if before is not None and running > before:
            self.breaker.half_open()
            if before == 0:
                self.load.restored()

    @property
    def ready(self) -> bool:
        """A replica is known to run (or none was ever reported, as for an external API)."""
        return self._running != 0

    def starting_retry_after_s(self) -> float:
        """While no replica runs: how long until one should have started."""
        left = self._expected_start_s - (self._clock() - self._unready_since)
        return left if left >= 1.0 else LATE_START_RETRY_S

    # Admission -------------------------------------------------------------------------------------

    def reserve(self, request: GenerationRequest, priority: str = "normal") -> Ticket:
        """Admit a multi-pass answer once (the speculative cascade's): its ticket holds its place in the
        tier's load until `release`, and its passes (`open(..., ticket=...)`) are not admitted again. Its
        breaker pass is kept for its first pass (which gives the verdict), and given back at `release` if
        no pass spent it."""
        permit = self._admit(priority)
        ticket = self.load.started(request.sampling.get("max_tokens"), reserved=True)
        self._unspent[ticket] = permit
        return ticket

    def release(self, ticket: Ticket, completed: bool) -> None:
        if (permit := self._unspent.pop(ticket, None)) is not None:
            permit.release()
        self.load.finished(ticket, completed)

    def _admit(self, priority: str) -> Pass:
        if not self.ready and not self._scales_from_zero:  # before the load and the breaker: not a fault
            raise TierStarting(f"tier {self.name!r} has no running replica yet; one is starting",
                               retry_after_s=self.starting_retry_after_s())
        admission = self.load.admit(priority)  # before the breaker: a shed request must not use up its probe
        if not admission.admitted:
            raise Overloaded(f"tier {self.name!r} is at capacity (expected wait "
                             f"{admission.estimated_wait_s:.1f} s)", retry_after_s=admission.retry_after_s)
        return self._enter()

    def _enter(self) -> Pass:
        permit = self.breaker.enter()
        if permit is None:
            raise CircuitOpen(f"tier {self.name!r} is failing; its circuit is open for "
                              f"{self.breaker.retry_after_s():.0f} s more", retry_after_s=self.breaker.retry_after_s())
        return permit

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
            permit = self._admit(priority)
        else:
            permit = self._unspent.pop(reserved, None) or self._enter()
        with permit:  # released without a verdict however the request ends before its first token
            return await self._first(request, caller_deadline, attempt, span, reserved, permit)

    async def _first(self, request: GenerationRequest, caller_deadline: float, attempt: Attempt, span,
                     reserved: Ticket | None, permit: Pass) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = min(now + self._total_timeout_s, caller_deadline)
        starting = not self.ready  # a tier scaling from zero: its first replica starts for this request
        first_token_s = self._first_token_timeout_s + (self._expected_start_s if starting else 0.0)
        first_token_deadline = deadline if reserved else min(deadline, now + first_token_s)
        # With room in the batch, a live replica takes the request at once; waiting longer means it has none.
        room = self.load.in_flight <= self.load.batch if reserved else self.load.slot_free()
        dispatch_deadline = now + self._dispatch_timeout_s \
            if self._dispatch_timeout_s is not None and room and not starting else math.inf
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
            permit.succeeded()  # the backend answered; the request was at fault
            await self._close(stream, ticket, completed=False)
            raise
        except (ServingError, StopAsyncIteration, TimeoutError) as exc:
            faulted = not starting and self._at_fault(exc, caller_deadline, ticket.queued and not ticket.reserved)
            if faulted:
                permit.failed()
            await self._close(stream, ticket, completed=False, faulted=faulted)
            if isinstance(exc, TimeoutError) and first is None and loop.time() >= dispatch_deadline:
                raise NoLiveReplica(f"no replica of tier {self.name!r} took the request within "
                                    f"{self._dispatch_timeout_s:g} s") from None
            raise self._server_error(exc, "first token") from None
        except BaseException:  # cancelled: the caller went away, the backend is not at fault (no verdict)
            await self._close(stream, ticket, completed=False)
            raise
        permit.succeeded()
        if ticket.first_token_at is None:
            self.load.first_token(ticket)
        attempt.first_token_s = self._clock()
        _count(attempt, first)
        if not ticket.reserved:
            ticket.produced = first.completion_tokens
        return self._rest(first, stream, deadline, caller_deadline, ticket, attempt, span)

    async def _close(self, stream: AsyncIterator[GenerationChunk], ticket: Ticket, completed: bool,
                     faulted: bool = False) -> None:
        if not ticket.reserved:  # a reserved answer's ticket ends with the answer (`release`)
            self.load.finished(ticket, completed, faulted)
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
                    if self._at_fault(exc, caller_deadline, ticket.queued and not ticket.reserved):
                        self.breaker.failed_later()
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

    @staticmethod
    def _at_fault(exc: BaseException, caller_deadline: float, queued: bool) -> bool:
        """Whether the backend itself failed (a failure for its breaker). Overload is not a fault: neither a
        refusal at capacity (its replicas' queues full) nor a timeout of a request that started behind a
        full batch (the service's own queue made it late) trips the breaker; nor does the caller's own
        deadline running out."""
        timed_out = isinstance(exc, TimeoutError)
        return not (isinstance(exc, Overloaded) or (timed_out and queued) or
                    (timed_out and asyncio.get_running_loop().time() >= caller_deadline))

    def _server_error(self, exc: BaseException, stage: str) -> ServingError:
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"tier {self.name!r} timed out waiting for the {stage}")
        if isinstance(exc, StopAsyncIteration):
            return ServerError(f"tier {self.name!r} ended the stream without output")
        return exc


def _count(attempt: Attempt, chunk: GenerationChunk) -> None:
    attempt.input_tokens, attempt.output_tokens = chunk.prompt_tokens, chunk.completion_tokens
    attempt.replica_seconds = chunk.replica_seconds
