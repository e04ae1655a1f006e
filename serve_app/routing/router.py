"""Route a generation request to a tier, through the cascade, or down a fallback chain.

No Ray here: a backend is any function returning an async stream of `GenerationChunk`s, so the
deployment hands in Ray Serve handles and the unit tests hand in fakes.

Streaming and the cascade: the `auto` route runs the cheap tier to completion and buffers its answer
until the decision, then either replays the buffer or streams the strong tier's answer from its
start. A client therefore never sees part of one answer followed by another, at the price of a
time-to-first-token on `auto` equal to the cheap tier's whole generation time.

Every route opens its stream before returning: the first chunk has arrived (or the engine raised),
so errors still become an HTTP status, and a failing backend can still be replaced by the next one
in the route's fallback chain. Once the first chunk is out, a failure ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator, Callable

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from serve_app.api.errors import (
    BackendTimeout,
    BackendUnavailable,
    CircuitOpen,
    ClientError,
    ModelNotFound,
    NoLiveReplica,
    Overloaded,
    ServerError,
    ServingError,
)
from serve_app.api.protocol import Routing
from serve_app.config import AUTO_ROUTE, AppConfig, RolloutConfig, TierRollout
from serve_app.generation import Accepted, Backend, GenerationChunk, GenerationRequest
from serve_app.observability import tracing
from serve_app.observability.metering import FREE, Price
from serve_app.observability.telemetry import Attempt, Ledger
from serve_app.routing.admission import Ticket, TierLoad
from serve_app.routing.answer_cache import AnswerCache, cache_key
from serve_app.routing.cascade import decide
from serve_app.routing.circuit_breaker import BreakerState, CircuitBreaker
from serve_app.routing.rollout import Choice, RolledBack, ShadowRecord, TierTraffic, agreement
from serve_app.routing.scorers import SCORERS
from serve_app.routing.stream import RoutedStream

SHADOW_PRIMARY_WAIT_S = 600.0
"""How long a finished shadow waits for the primary answer to compare with (a client may never read it)."""


async def _from_list(chunks: list[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for chunk in chunks:
        yield chunk


async def _teed(chunks: AsyncIterator[GenerationChunk], answer: asyncio.Future) -> AsyncIterator[GenerationChunk]:
    """`chunks` as they are; `answer` gets (text, completion tokens) once they are all out, or None
    when the stream ends early."""
    text, tokens, complete = [], 0, False
    try:
        async for chunk in chunks:
            text.append(chunk.text)
            tokens = chunk.completion_tokens
            yield chunk
        complete = True
    finally:
        await chunks.aclose()
        if not answer.done():
            answer.set_result(("".join(text), tokens) if complete else None)


def is_retryable(error: BaseException) -> bool:
    """Worth another try at the same backend: it failed, but not by being overloaded, known broken
    (open circuit, no live replica) or slow (the timeout already spent the caller's patience); never a
    client error."""
    return isinstance(error, ServerError) and not isinstance(
        error, (Overloaded, CircuitOpen, BackendTimeout, NoLiveReplica))


class Tier:
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

    async def open(self, request: GenerationRequest, priority: str = "normal", caller_deadline: float = math.inf,
                   ledger: Ledger | None = None) -> AsyncIterator[GenerationChunk]:
        """Admit, start a generation and wait for its first chunk, so that failures are raised here.
        `caller_deadline` (event-loop time) is the caller's own bound; the tier's timeouts apply within it."""
        attempt = (ledger or Ledger(self._clock())).attempt(self.name, self._clock())
        span = tracing.start_attempt(attempt)
        request = dataclasses.replace(request, trace_context=tracing.carrier(span))
        try:
            return await self._open(request, priority, caller_deadline, attempt, span)
        except BaseException as exc:
            self._end(attempt, span, exc)
            raise

    async def _open(self, request: GenerationRequest, priority: str, caller_deadline: float,
                    attempt: Attempt, span) -> AsyncIterator[GenerationChunk]:
        admission = self.load.admit(priority)  # before the breaker: a shed request must not use up its probe
        if not admission.admitted:
            raise Overloaded(f"tier {self.name!r} is at capacity (expected wait "
                             f"{admission.estimated_wait_s:.1f} s)", retry_after_s=admission.retry_after_s)
        if not self.breaker.allow():
            raise CircuitOpen(f"tier {self.name!r} is failing; its circuit is open for "
                              f"{self.breaker.retry_after_s():.0f} s more", retry_after_s=self.breaker.retry_after_s())
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = min(now + self._total_timeout_s, caller_deadline)
        first_token_deadline = min(deadline, now + self._first_token_timeout_s)
        # With a slot free, a live replica takes the request at once; waiting longer means it has none.
        dispatch_deadline = now + self._dispatch_timeout_s \
            if self._dispatch_timeout_s is not None and self.load.slot_free() else math.inf
        ticket = self.load.started(request.sampling.get("max_tokens"))
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
            self._judge(exc, caller_deadline)
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
        self.load.first_token(ticket)
        attempt.first_token_s = self._clock()
        _count(attempt, first)
        ticket.produced = first.completion_tokens
        return self._rest(first, stream, deadline, caller_deadline, ticket, attempt, span)

    async def _close(self, stream: AsyncIterator[GenerationChunk], ticket: Ticket, completed: bool) -> None:
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
                    self._judge(exc, caller_deadline)
                    error = self._server_error(exc, "answer")
                    raise error from None
                ticket.produced = chunk.completion_tokens
                _count(attempt, chunk)
                yield chunk
        except BaseException as exc:
            error = error or exc
            raise
        finally:
            await self._close(stream, ticket, completed)
            self._end(attempt, span, None if completed else error or GeneratorExit())

    def _judge(self, exc: BaseException, caller_deadline: float) -> None:
        """Count a failure against the tier, unless it was the caller's own timeout that ran out."""
        if isinstance(exc, TimeoutError) and asyncio.get_running_loop().time() >= caller_deadline:
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


def _reasons(failures: list[tuple[str, ServingError]]) -> str:
    return "; ".join(f"{step}: {error.code}" for step, error in failures)


class CascadeRouter:
    def __init__(self, backends: dict[str, Backend], config: AppConfig, clock: Callable[[], float],
                 rng: random.Random | None = None, on_rollback: Callable[[str, RolledBack], None] | None = None,
                 on_shadow: Callable[[str, ShadowRecord], None] | None = None):
        """`backends` by label: each engine version's (`AppConfig.engine_versions`) and each external API's.
        `on_rollback` and `on_shadow` tell the deployment about canary rollbacks and shadow results."""
        r = config.resilience
        engines = {engine.label: engine for engine in config.engine_versions()}
        self._tiers: dict[str, Tier] = {}
        for label, backend in backends.items():
            engine = engines.get(label)
            limits = engine.config if engine else config.external[label]
            self._tiers[label] = Tier(
                label, backend,
                CircuitBreaker(r.breaker_failure_threshold, r.breaker_window_s, r.breaker_cooldown_s, clock),
                TierLoad(limits.concurrency_slots * (engine.config.initial_replicas if engine else 1),
                         r.shed_ttft_target_s, clock, cold_slots=max(1, engine.config.initial_replicas) if engine else 1),
                limits.first_token_timeout_s, limits.total_timeout_s,
                engine.config.dispatch_timeout_s if engine else None, limits.price, clock,
                engine.version if engine else None,
            )
        self._versions: dict[str, dict[str, str]] = {}
        """tier -> version -> backend label."""
        for engine in engines.values():
            self._versions.setdefault(engine.tier, {})[engine.version] = engine.label
        self._slots_per_replica = {engine.label: engine.config.concurrency_slots for engine in engines.values()}
        self._clock = clock
        self._rng = rng or random.Random()
        self._default_versions = {name: tier.default_version for name, tier in config.tiers.items()}
        self._traffic = {tier: TierTraffic(tier, version, TierRollout(), self._rng, clock)
                         for tier, version in self._default_versions.items()}
        self._on_rollback = on_rollback
        self._on_shadow = on_shadow
        self._shadow_tasks: set[asyncio.Task] = set()
        self._cascade = config.cascade
        self._scorer = SCORERS[config.cascade.scorer]
        self._alias = config.model_alias
        self._routable = list(config.tiers)
        self._fallbacks = r.fallbacks
        self._retry = r
        self._cache = AnswerCache(r.answer_cache_max_entries, r.answer_cache_max_age_s, clock) \
            if r.answer_cache_max_entries else None

    def set_rollouts(self, rollouts: RolloutConfig) -> None:
        """Apply a (validated) rollout config. A tier whose rollout is unchanged keeps its guard's
        history and any rollback; a changed one starts afresh."""
        for tier, traffic in self._traffic.items():
            rollout = rollouts.rollouts.get(tier, TierRollout())
            if rollout != traffic.config:
                self._traffic[tier] = TierTraffic(tier, self._default_versions[tier], rollout, self._rng, self._clock)

    def rollout_status(self) -> dict[str, dict]:
        return {tier: traffic.status() for tier, traffic in self._traffic.items()}

    def rollout_identities(self) -> dict[str, str]:
        """Per tier, the identity of its rollout (serve_app.routing.rollout.rollout_identity)."""
        return {tier: traffic.identity for tier, traffic in self._traffic.items()}

    def adopt_rollback(self, tier: str, identity: str, rollback: RolledBack) -> bool:
        """A rollback decided elsewhere (another router replica, an earlier life of this one) for the
        tier's rollout `identity`; ignored when this replica applies another rollout. True if it changed anything."""
        traffic = self._traffic.get(tier)
        return traffic is not None and traffic.identity == identity and traffic.adopt(rollback)

    @property
    def routes(self) -> list[str]:
        return [AUTO_ROUTE, self._alias, *self._routable]

    def set_running_replicas(self, label: str, replicas: int) -> None:
        """An engine version's capacity follows its running replicas (autoscaling, a replica lost or
        replaced). While none runs, one replica's slots stand in, so that estimates stay finite."""
        load = self._tiers[label].load
        load.slots = self._slots_per_replica[label] * max(1, replicas)
        load.cold_slots = max(1, replicas)

    def seed_speed(self, label: str, ttft_s: float, tpot_s: float) -> None:
        """An engine version's warm-up figures: its speed before any live request (admission.TierLoad.seed)."""
        self._tiers[label].load.seed(ttft_s, tpot_s)

    def backend_states(self) -> dict[str, tuple[BreakerState, int, int]]:
        """Per backend: circuit state, requests in flight, concurrency slots."""
        return {name: (tier.breaker.state, tier.load.in_flight, tier.load.slots) for name, tier in self._tiers.items()}

    def breaker_states(self) -> dict[str, str]:
        return {name: tier.breaker.state.value for name, tier in self._tiers.items()}

    def resolve(self, model: str) -> str:
        """The route a request's `model` names: a tier, or `auto` (also by the app's alias)."""
        if model in self._routable:
            return model
        if model in (AUTO_ROUTE, self._alias):
            return AUTO_ROUTE
        raise ModelNotFound(f"The model {model!r} does not exist; choose one of {self.routes}.", param="model")

    async def open(self, model: str, request: GenerationRequest, priority: str = "normal",
                   timeout_s: float | None = None, ledger: Ledger | None = None) -> RoutedStream:
        """Open the route's stream, or else the first of its fallbacks that opens, or else a cached
        answer. Client errors end the search at once. `timeout_s` bounds the whole search and answer
        (every try and fallback), within each tier's own timeouts. Every try is recorded in `ledger`."""
        ledger = ledger or Ledger(self._clock())
        return (await self._open(model, request, priority, timeout_s, ledger)).but(ledger=ledger)

    async def _open(self, model: str, request: GenerationRequest, priority: str, timeout_s: float | None,
                    ledger: Ledger) -> RoutedStream:
        route = ledger.route = self.resolve(model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else math.inf
        failures: list[tuple[str, ServingError]] = []
        for step in [route, *self._fallbacks.get(route, [])]:
            if loop.time() >= deadline:
                break
            try:
                stream = await self._with_retries(step, request, priority, deadline, ledger)
            except ClientError:
                raise
            except ServingError as exc:
                failures.append((step, exc))
                continue
            if failures:
                stream = stream.but(routing=stream.routing.model_copy(update={"route": route,
                                                                              "fallback_reason": _reasons(failures)}))
            return self._remembered(route, request, stream)
        cached = self._cache.get(cache_key(route, request)) if self._cache else None
        if cached is not None:
            routing = Routing(route=route, served_by="cache", fallback_reason=f"{_reasons(failures)}; cached answer "
                              f"from {cached.served_by}")
            return RoutedStream(routing, _from_list(list(cached.chunks)))
        if loop.time() >= deadline:
            raise BackendTimeout(f"The request's timeout of {timeout_s:g} s expired ({_reasons(failures)}).")
        waits = [e.retry_after_s for _, e in failures if e.retry_after_s is not None]
        error = Overloaded if all(isinstance(e, Overloaded) for _, e in failures) else BackendUnavailable
        raise error(f"No backend could answer route {route!r} ({_reasons(failures)}).",
                    retry_after_s=min(waits) if waits else None)

    async def _with_retries(self, step: str, request: GenerationRequest, priority: str,
                            deadline: float, ledger: Ledger) -> RoutedStream:
        r = self._retry
        retrying = AsyncRetrying(
            stop=stop_after_attempt(r.retry_attempts) | stop_after_delay(r.retry_deadline_s),
            wait=wait_exponential_jitter(multiplier=r.retry_initial_backoff_s, max=r.retry_max_backoff_s,
                                         jitter=r.retry_initial_backoff_s),
            retry=retry_if_exception(is_retryable), reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                tagged = dataclasses.replace(request, request_id=f"{request.request_id}-{step}-{number}")
                if step == AUTO_ROUTE:
                    return await self._cascade_stream(tagged, priority, deadline, ledger)
                if step in self._traffic:
                    version, chunks = await self._open_tier(step, tagged, priority, deadline, ledger)
                    return RoutedStream(Routing(route=step, served_by=step, version=version),
                                        self._mirrored(step, tagged, chunks))
                return RoutedStream(Routing(route=step, served_by=step),
                                    await self._tiers[step].open(tagged, priority, deadline, ledger))
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _open_tier(self, tier: str, request: GenerationRequest, priority: str, deadline: float,
                         ledger: Ledger) -> tuple[str, AsyncIterator[GenerationChunk]]:
        """Open the version of `tier` the rollout picks for this request. A canary that fails is judged
        by its guard and the stable version answers instead."""
        traffic = self._traffic[tier]
        choice = traffic.pick(request.session_key)
        try:
            return choice.version, await self._open_version(traffic, choice, request, priority, deadline, ledger)
        except ServingError as exc:
            if not choice.canary or isinstance(exc, ClientError):
                raise
        stable = Choice(traffic.stable, canary=False)
        return stable.version, await self._open_version(traffic, stable, request, priority, deadline, ledger)

    async def _open_version(self, traffic: TierTraffic, choice: Choice, request: GenerationRequest, priority: str,
                            deadline: float, ledger: Ledger) -> AsyncIterator[GenerationChunk]:
        started = self._clock()
        try:
            chunks = await self._tiers[self._versions[traffic.tier][choice.version]].open(request, priority, deadline, ledger)
        except ServingError as exc:
            if not isinstance(exc, (ClientError, Overloaded)):  # the version failed (an open circuit too),
                self._judge(traffic, choice, False, None)        # not the request, nor its capacity
            raise
        self._judge(traffic, choice, True, self._clock() - started)
        return chunks

    def _judge(self, traffic: TierTraffic, choice: Choice, ok: bool, ttft_s: float | None) -> None:
        rollback = traffic.record(choice, ok, ttft_s)
        if rollback is not None and self._on_rollback is not None:
            self._on_rollback(traffic.tier, rollback)

    def _mirrored(self, tier: str, request: GenerationRequest,
                  chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        """The primary answer as it is; when the rollout mirrors this request, a copy goes to the shadow
        version in the background and the two answers are compared once both are done."""
        traffic = self._traffic[tier]
        version = traffic.mirror()
        if version is None:
            return chunks
        shadow = self._tiers[self._versions[tier][version]]
        if not shadow.load.slot_free():  # shed first: a busy shadow gets no copies
            self._shadow_done(traffic, ShadowRecord(version, "shed", error="the shadow version is busy"))
            return chunks
        primary: asyncio.Future = asyncio.get_running_loop().create_future()
        copy = dataclasses.replace(request, request_id=f"{request.request_id}-shadow", trace_context={})
        task = asyncio.create_task(self._shadow(traffic, shadow, copy, primary))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
        return _teed(chunks, primary)

    async def _shadow(self, traffic: TierTraffic, shadow: Tier, request: GenerationRequest,
                      primary: asyncio.Future) -> None:
        traffic.shadow_in_flight += 1
        record = ShadowRecord(shadow.version, "ok")
        ledger = Ledger(self._clock())
        try:
            text = []
            try:
                async for chunk in await shadow.open(request, "low", math.inf, ledger):
                    text.append(chunk.text)
                    record.output_tokens = chunk.completion_tokens
            except Overloaded as exc:
                record.outcome, record.error = "shed", exc.code
            except ServingError as exc:
                record.outcome, record.error = "error", exc.code
            attempt = ledger.attempts[-1] if ledger.attempts else None
            if attempt is not None:
                record.ttft_s, record.cost_usd = attempt.ttft_s, attempt.cost_usd
                record.latency_s = (attempt.finished_s or self._clock()) - attempt.started_s
            try:
                async with asyncio.timeout(SHADOW_PRIMARY_WAIT_S):
                    answer = await primary
            except TimeoutError:
                answer = None
            if answer is not None and record.outcome == "ok":
                primary_text, record.primary_output_tokens = answer
                record.agreement = round(agreement(primary_text, "".join(text)), 4)
                record.exact = primary_text == "".join(text)
        finally:
            traffic.shadow_in_flight -= 1
            self._shadow_done(traffic, record)

    def _shadow_done(self, traffic: TierTraffic, record: ShadowRecord) -> None:
        traffic.shadows.add(record)
        if self._on_shadow is not None:
            self._on_shadow(traffic.tier, record)

    def _remembered(self, route: str, request: GenerationRequest, stream: RoutedStream) -> RoutedStream:
        if self._cache is None:
            return stream
        key, cache = cache_key(route, request), self._cache

        async def tee(source: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
            seen = []
            try:
                async for chunk in source:
                    seen.append(chunk)
                    yield chunk
            finally:
                await source.aclose()
            cache.put(key, seen, stream.routing.served_by)

        return stream.wrapped(tee)

    async def _cascade_stream(self, request: GenerationRequest, priority: str, deadline: float,
                              ledger: Ledger) -> RoutedStream:
        cheap, strong = self._cascade.cheap_tier, self._cascade.strong_tier
        wanted = request.sampling.get("logprobs")
        probe = dataclasses.replace(request, sampling={**request.sampling, "logprobs": wanted or 0})
        version, chunks = await self._open_tier(cheap, probe, priority, deadline, ledger)
        answer = [chunk async for chunk in chunks]
        logprobs = [lp.logprob for chunk in answer for lp in chunk.logprobs or ()]
        decision = decide(logprobs, answer[-1].finish_reason, self._scorer, self._cascade.threshold)
        routing = Routing(route=AUTO_ROUTE, served_by=cheap, version=version, escalated=decision.escalate,
                          confidence=round(decision.confidence, 6), reason=decision.reason)
        if decision.escalate:
            try:
                escalation = dataclasses.replace(request, request_id=f"{request.request_id}-{strong}")
                version, chunks = await self._open_tier(strong, escalation, priority, deadline, ledger)
                return RoutedStream(routing.model_copy(update={"served_by": strong, "version": version}), chunks)
            except ClientError:
                raise
            except ServingError as exc:  # the strong tier failed: the cheap answer beats no answer
                routing = routing.model_copy(update={"fallback_reason": f"{strong}: {exc.code}"})
        if wanted is None:
            for chunk in answer:
                chunk.logprobs = None
        return RoutedStream(routing, _from_list(answer))
