"""Route a generation request to a tier, through the cascade, or down a fallback chain.

No Ray here: a backend is any function returning an async stream of `GenerationChunk`s, so the
deployment hands in Ray Serve handles and the unit tests hand in fakes.

Streaming and the cascade: in `confidence` and `verified` modes the `auto` route runs the cheap tier to
completion and buffers its answer until the decision (in `verified` mode, after one scoring prefill of
the strong tier over it), then either replays the buffer or streams the strong tier's
answer from its start. A client therefore never sees part of one answer followed by another, at the
price of a time-to-first-token on `auto` equal to the cheap tier's whole generation time. In
`speculative` mode (serve_app.routing.speculative) the answer streams block by block as the strong
tier verifies the cheap tier's drafts.

Every route opens its stream before returning: the first chunk has arrived (or the engine raised),
so errors still become an HTTP status, and a failing backend can still be replaced by the next one
in the route's fallback chain. Once the first chunk is out, a failure ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable

from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from serve_app.api.errors import (
    BackendTimeout,
    BackendUnavailable,
    ClientError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ServingError,
)
from serve_app.api.protocol import Routing
from serve_app.config import AUTO_ROUTE, AppConfig, CascadeConfig, RolloutConfig, TierRollout
from serve_app.generation import GenerationChunk, GenerationRequest
from serve_app.observability.telemetry import Ledger
from serve_app.routing.answer_cache import AnswerCache, cache_key
from serve_app.routing.backend import GuardedBackend, is_retryable
from serve_app.routing.cascade import EMPTY_ANSWER, CascadeDecision, decide, judged
from serve_app.routing.circuit_breaker import BreakerState
from serve_app.routing.rollout import RolledBack
from serve_app.routing.scorers import VERIFIERS
from serve_app.routing.speculative import SpeculativeAnswer, drain_verdict
from serve_app.routing.stream import RoutedStream, from_list, prepended
from serve_app.routing.versions import TierVersions


def _reasons(failures: list[tuple[str, ServingError]]) -> str:
    return "; ".join(f"{step}: {error.code}" for step, error in failures)


class CascadeRouter:
    def __init__(self, backends: dict[str, GuardedBackend], tiers: dict[str, TierVersions], config: AppConfig,
                 clock: Callable[[], float], slots_per_replica: dict[str, int], cache: AnswerCache | None = None):
        """Built by `factory.build_router`. `backends` by label (each engine version's and each external
        API's), `tiers` by name; `slots_per_replica` per engine version's label."""
        self.backends = backends
        self._tiers = tiers
        self._clock = clock
        self._slots_per_replica = slots_per_replica
        self._cache = cache
        self._cascade = config.cascade
        self._alias = config.model_alias
        self._routable = list(config.tiers)
        self._fallbacks = config.resilience.fallbacks
        self._retry = config.resilience

    def set_rollouts(self, rollouts: RolloutConfig) -> None:
        """Apply a (validated) rollout config. A tier whose rollout is unchanged keeps its guard's
        history and any rollback; a changed one starts afresh."""
        for tier, versions in self._tiers.items():
            versions.apply(rollouts.rollouts.get(tier, TierRollout()))

    def rollout_status(self) -> dict[str, dict]:
        return {tier: versions.status() for tier, versions in self._tiers.items()}

    def label(self, tier: str, version: str) -> str:
        """The backend label of a tier's version: the tier's name while it has one version, else tier@version."""
        return self._tiers[tier].label(version)

    def runs_canary(self) -> bool:
        """Whether some tier sends traffic to a canary (rollbacks may then come from other replicas)."""
        return any(versions.runs_canary for versions in self._tiers.values())

    def rollout_identities(self) -> dict[str, str]:
        """Per tier, the identity of its rollout (serve_app.routing.rollout.rollout_identity)."""
        return {tier: versions.identity for tier, versions in self._tiers.items()}

    def adopt_rollback(self, tier: str, identity: str, rollback: RolledBack) -> bool:
        """A rollback decided elsewhere (another router replica, an earlier life of this one) for the
        tier's rollout `identity`; ignored when this replica applies another rollout. True if it changed anything."""
        versions = self._tiers.get(tier)
        return versions is not None and versions.adopt(identity, rollback)

    @property
    def routes(self) -> list[str]:
        return [AUTO_ROUTE, self._alias, *self._routable]

    def set_running_replicas(self, label: str, replicas: int) -> None:
        """An engine version's capacity follows its running replicas (autoscaling, a replica lost or
        replaced). While none runs, one replica's slots stand in, so that estimates stay finite."""
        load = self.backends[label].load
        load.slots = self._slots_per_replica[label] * max(1, replicas)
        load.cold_slots = max(1, replicas)

    def seed_speed(self, label: str, ttft_s: float, tpot_s: float) -> None:
        """An engine version's warm-up figures: its speed before any live request (admission.TierLoad.seed)."""
        self.backends[label].load.seed(ttft_s, tpot_s)

    def backend_states(self) -> dict[str, tuple[BreakerState, int, int]]:
        """Per backend: circuit state, requests in flight, concurrency slots."""
        return {name: (b.breaker.state, b.load.in_flight, b.load.slots) for name, b in self.backends.items()}

    def breaker_states(self) -> dict[str, str]:
        return {name: b.breaker.state.value for name, b in self.backends.items()}

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
            return RoutedStream(routing, from_list(list(cached.chunks)))
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
                if step in self._tiers:
                    version, chunks = await self._tiers[step].open(tagged, priority, deadline, ledger, mirror=True)
                    return RoutedStream(Routing(route=step, served_by=step, version=version), chunks)
                return RoutedStream(Routing(route=step, served_by=step),
                                    await self.backends[step].open(tagged, priority, deadline, ledger))
        raise AssertionError("unreachable: tenacity re-raises the last error")

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

    def _cascade_for(self, request: GenerationRequest) -> CascadeConfig:
        """The config's cascade settings, with the request's own over them where the config allows it."""
        if not request.cascade:
            return self._cascade
        if not self._cascade.allow_request_overrides:
            raise InvalidRequest("this deployment does not take per-request cascade settings "
                                 "(cascade.allow_request_overrides)", param="cascade")
        try:
            return CascadeConfig.model_validate(self._cascade.model_dump() | request.cascade)
        except ValidationError as exc:
            raise InvalidRequest(f"cascade: {exc.errors()[0]['msg']}", param="cascade") from None

    async def _speculative_stream(self, request: GenerationRequest, cascade: CascadeConfig, priority: str,
                                  deadline: float, ledger: Ledger) -> RoutedStream:
        """The speculative cascade's answer, opened: its first round is out (or both tiers failed)."""
        if request.sampling.get("logprobs") is not None:
            raise InvalidRequest("logprobs are not available on the speculative cascade route; ask a tier",
                                 param="logprobs")
        cheap, strong, versions = cascade.cheap_tier, cascade.strong_tier, {}

        async def open_tier(tier: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
            versions[tier], chunks = await self._tiers[tier].open(request, priority, deadline, ledger)
            return chunks

        answer = SpeculativeAnswer(open_tier, request, cheap, strong, cascade.draft_tokens, cascade.alpha,
                                   cascade.draft_stop_prob)
        chunks = answer.chunks()
        first = await anext(chunks)
        served_by = cheap if answer.stats.strong_failed else strong
        routing = Routing(route=AUTO_ROUTE, served_by=served_by, version=versions.get(served_by), reason="speculative",
                          fallback_reason=f"{strong}: failed mid-answer" if answer.stats.strong_failed else
                          f"{cheap}: failed" if answer.stats.cheap_failed else None)
        return RoutedStream(routing, prepended(first, chunks))

    async def _cascade_stream(self, request: GenerationRequest, priority: str, deadline: float,
                              ledger: Ledger) -> RoutedStream:
        cascade = self._cascade_for(request)
        if cascade.mode == "speculative":
            return await self._speculative_stream(request, cascade, priority, deadline, ledger)
        cheap, strong = cascade.cheap_tier, cascade.strong_tier
        wanted = request.sampling.get("logprobs")
        probe = dataclasses.replace(request, sampling={**request.sampling, "logprobs": wanted or 0})
        version, chunks = await self._tiers[cheap].open(probe, priority, deadline, ledger)
        answer = [chunk async for chunk in chunks]
        routing = Routing(route=AUTO_ROUTE, served_by=cheap, version=version)
        if cascade.mode == "verified":
            decision, routing = await self._verified(request, cascade, answer, routing, priority, deadline, ledger)
        else:
            logprobs = [lp.logprob for chunk in answer for lp in chunk.logprobs or ()]
            decision = decide(logprobs, answer[-1].finish_reason, cascade.scorer_fn(), cascade.threshold)
        routing = routing.model_copy(update={"escalated": decision.escalate, "reason": decision.reason,
                                             "confidence": round(decision.confidence, 6)})
        if decision.escalate:
            try:
                escalation = dataclasses.replace(request, request_id=f"{request.request_id}-{strong}")
                version, chunks = await self._tiers[strong].open(escalation, priority, deadline, ledger)
                return RoutedStream(routing.model_copy(update={"served_by": strong, "version": version}), chunks)
            except ClientError:
                raise
            except ServingError as exc:  # the strong tier failed: the cheap answer beats no answer
                routing = routing.model_copy(update={"fallback_reason": f"{strong}: {exc.code}"})
        if wanted is None:
            for chunk in answer:
                chunk.logprobs = None
        return RoutedStream(routing, from_list(answer))

    async def _verified(self, request: GenerationRequest, cascade: CascadeConfig, answer: list[GenerationChunk],
                        routing: Routing, priority: str, deadline: float,
                        ledger: Ledger) -> tuple[CascadeDecision, Routing]:
        """The strong tier's verdict on the cheap answer's text (in its own tokens, one prefill), judged
        by the configured verifier. A verdict the strong tier cannot give leaves the cheap answer served."""
        text = "".join(chunk.text for chunk in answer)
        if not text:
            return EMPTY_ANSWER, routing
        scoring = dataclasses.replace(request, request_id=f"{request.request_id}-verify", verify_text=text,
                                      sampling={k: v for k, v in request.sampling.items() if k != "logprobs"})
        try:
            _, chunks = await self._tiers[cascade.strong_tier].open(scoring, priority, deadline, ledger)
            verdict = await drain_verdict(chunks)
        except ServingError as exc:  # a client error too: e.g. the answer does not fit the strong model's context
            return (CascadeDecision(escalate=False, confidence=0.0, reason="unverified"),
                    routing.model_copy(update={"fallback_reason": f"{cascade.strong_tier}: {exc.code}"}))
        scores = {name: round(verify(verdict, cascade.alpha), 6) for name, verify in VERIFIERS.items()}
        routing = routing.model_copy(update={"verification": scores | {"tokens": len(verdict.logprobs)}})
        return judged(scores[cascade.verifier], cascade.threshold), routing
