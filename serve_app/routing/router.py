"""Route a generation request to a tier, through the cascade, or down a fallback chain.

No Ray here: a backend is any function returning an async stream of `GenerationChunk`s, so the
deployment hands in Ray Serve handles and the unit tests hand in fakes.

Every route opens its stream before returning: the first chunk has arrived (or the engine raised),
so errors still become an HTTP status, and a failing backend can still be replaced by the next one
in the route's fallback chain. Once the first chunk is out, a failure ends the stream with an error.
The `auto` route runs the cascade mode in force (serve_app.routing.cascades).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable

from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from serve_app.config import AUTO_ROUTE, AppConfig, CascadeConfig
from serve_app.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    ClientError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ServingError,
)
from serve_app.core.generation import GenerationChunk, GenerationRequest
from serve_app.core.ledger import Ledger
from serve_app.core.stream import RoutedStream, Routing, from_list
from serve_app.routing.admission import Ticket, TierLoad
from serve_app.routing.answer_cache import AnswerCache, cache_key
from serve_app.routing.backend import is_retryable
from serve_app.routing.cascades import MODES, CascadeCall, adaptive
from serve_app.routing.cascades.adaptive import Plan
from serve_app.routing.cascades.base import Reservation
from serve_app.routing.fleet import Fleet
from serve_app.routing.versions import Tiers


def _reasons(failures: list[tuple[str, ServingError]]) -> str:
    return "; ".join(f"{step}: {error.code}" for step, error in failures)


def _details(failures: list[tuple[str, ServingError]]) -> str:
    """Each step's refusal in full: which tier refused, why (and on `auto`, under which plan)."""
    return "; ".join(f"{step}: {error.code}: {error.message}" for step, error in failures)


class CascadeRouter:
    def __init__(self, fleet: Fleet, tiers: Tiers, config: AppConfig, clock: Callable[[], float],
                 cache: AnswerCache | None = None):
        """Built by `factory.build_router`: every backend (`fleet`), every tier's versions (`tiers`)."""
        self.fleet = fleet
        """Every backend's capacity and health (the deployment reports replicas and speeds to it)."""
        self.tiers = tiers
        """Every tier's versions and the rollouts in force (the deployment applies rollouts to it)."""
        self._clock = clock
        self._cache = cache
        self._cascade = config.cascade
        self._alias = config.model_alias
        self._routable = list(config.tiers)
        self._fallbacks = config.resilience.fallbacks
        self._retry = config.resilience
        self._tool_parsers = {name: tier.engine.tool_call_parser is not None for name, tier in config.tiers.items()}

    @property
    def routes(self) -> list[str]:
        return [AUTO_ROUTE, self._alias, *self._routable]

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
        route = self.resolve(model)
        ledger.resolved(route)
        steps = [route, *self._fallbacks.get(route, [])]
        if request.tools:  # only backends that can call tools: none, a clear 400
            if not (steps := [step for step in steps if self._takes_tools(step)]) or steps[0] != route:
                raise InvalidRequest(f"tools: route {route!r} has a model tier without a tool parser "
                                     "(engine.tool_call_parser)", param="tools")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else math.inf
        failures: list[tuple[str, ServingError]] = []
        for step in steps:
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
        raise error(f"No backend could answer route {route!r} ({_reasons(failures)}). {_details(failures)}",
                    retry_after_s=min(waits) if waits else None)

    async def _with_retries(self, step: str, request: GenerationRequest, priority: str,
                            deadline: float, ledger: Ledger) -> RoutedStream:
        r = self._retry
        retrying = AsyncRetrying(
            stop=stop_after_attempt(r.retry_attempts),
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
                if step in self.tiers:
                    version, chunks = await self.tiers.open(step, tagged, priority, deadline, ledger, mirror=True)
                    return RoutedStream(Routing(route=step, served_by=step, version=version), chunks)
                return RoutedStream(Routing(route=step, served_by=step),
                                    await self.fleet[step].open(tagged, priority, deadline, ledger))
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _takes_tools(self, step: str) -> bool:
        """Whether a route can answer a request with tools: each tier it may use has a tool parser (an external
        API is taken to)."""
        tiers = [self._cascade.cheap_tier, self._cascade.strong_tier] if step == AUTO_ROUTE else [step]
        return all(self._tool_parsers.get(tier, True) for tier in tiers)

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
            error = exc.errors()[0]
            param = ".".join(["cascade", *(str(part) for part in error["loc"])])
            raise InvalidRequest(f"{param}: {error['msg']}", param=param) from None

    def _plan(self, settings: CascadeConfig, request: GenerationRequest, own: int = 0) -> Plan:
        """What `auto` runs for this request: the configured mode, or under load the adaptive plan's choice.
        `own`: the places this request already holds on each tier (not counted as others' load)."""
        if settings.mode == "speculative" and request.tools:
            return Plan("strong", reason="tools: the strong tier's own calls, parsed by its tool parser")
        if settings.mode != "speculative" or not settings.adaptive.enabled:
            return Plan(settings.mode, settings.draft_tokens if settings.mode == "speculative" else 0, "configured")
        key = request.session_key or request.request_id
        strong, cheap = (self.tiers.backend(tier, key).load for tier in (settings.strong_tier, settings.cheap_tier))
        return adaptive.plan(settings.adaptive, settings.draft_tokens, _state(strong, own), _state(cheap, own),
                             strong.ttft_target_s)

    async def _cascade_stream(self, request: GenerationRequest, priority: str, deadline: float,
                              ledger: Ledger) -> RoutedStream:
        settings = self._cascade_for(request)
        plan = self._plan(settings, request)

        async def open_tier(tier: str, tier_request: GenerationRequest,
                            ticket: Ticket | None = None) -> tuple[str, AsyncIterator[GenerationChunk]]:
            return await self.tiers.open(tier, tier_request, priority, deadline, ledger, ticket=ticket)

        def reserve(tier: str, tier_request: GenerationRequest) -> Reservation:
            backend = self.tiers.backend(tier, tier_request.session_key or tier_request.request_id)
            ticket = backend.reserve(tier_request, priority)
            return Reservation(ticket, lambda completed: backend.release(ticket, completed))

        def replan() -> int:  # before each round: the load now, less this answer's own places
            now = self._plan(settings, request, own=1)
            return now.draft_tokens if now.mode == "speculative" else 0

        try:
            if plan.mode == "strong":
                version, chunks = await open_tier(settings.strong_tier, request)
                stream = RoutedStream(Routing(route=AUTO_ROUTE, served_by=settings.strong_tier, version=version,
                                              reason="strong alone"), chunks)
            else:
                chosen = settings.model_copy(update={"mode": plan.mode, "draft_tokens": plan.draft_tokens or
                                                     settings.draft_tokens})
                adaptive_rounds = replan if plan.reason != "configured" else None
                stream = await MODES[plan.mode](CascadeCall(request, chosen, open_tier, reserve, adaptive_rounds))
        except ClientError:
            raise
        except ServingError as exc:  # the refusal names the plan that was refused, and the tier's own reason
            raise type(exc)(f"plan {plan.label} ({plan.reason}): {exc.message}", exc.param,
                            exc.retry_after_s) from None
        return stream.but(routing=stream.routing.model_copy(update={"plan": plan.label, "plan_reason": plan.reason}))


def _state(load: TierLoad, own: int = 0) -> adaptive.TierState:
    return adaptive.TierState(max(0, load.in_flight - own), load.batch, load.estimate_wait_s(), load.ttft.value or 0.0)
