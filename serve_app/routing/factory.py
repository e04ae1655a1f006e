"""Build a `CascadeRouter` from the config: one `GuardedBackend` per engine version and external API
(its breaker, load shedding, timeouts and price), one `TierVersions` per tier, the answer cache."""

from __future__ import annotations

import random
from collections.abc import Callable

from serve_app.config import AppConfig, ExternalConfig
from serve_app.generation import Backend
from serve_app.routing.admission import TierLoad
from serve_app.routing.answer_cache import AnswerCache
from serve_app.routing.backend import GuardedBackend
from serve_app.routing.circuit_breaker import CircuitBreaker
from serve_app.routing.rollout import RolledBack, ShadowRecord
from serve_app.routing.router import CascadeRouter
from serve_app.routing.versions import TierVersions


def build_router(backends: dict[str, Backend], config: AppConfig, clock: Callable[[], float],
                 rng: random.Random | None = None, on_rollback: Callable[[str, RolledBack], None] | None = None,
                 on_shadow: Callable[[str, ShadowRecord], None] | None = None) -> CascadeRouter:
    """`backends` by label: each engine version's (`AppConfig.engine_versions`) and each external API's.
    `on_rollback` and `on_shadow` tell the deployment about canary rollbacks and shadow results."""
    r = config.resilience
    rng = rng or random.Random()

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(r.breaker_failure_threshold, r.breaker_window_s, r.breaker_cooldown_s, clock)

    def external(name: str, api: ExternalConfig) -> GuardedBackend:
        return GuardedBackend(name, backends[name], breaker(), TierLoad(api.concurrency_slots, r.shed_ttft_target_s, clock),
                              api.first_token_timeout_s, api.total_timeout_s, None, api.price, clock)

    guarded: dict[str, GuardedBackend] = {}
    versions: dict[str, dict[str, GuardedBackend]] = {}
    engines = config.engine_versions()  # validates every version: once
    for engine in engines:
        tier, replicas = engine.config, engine.config.initial_replicas
        guarded[engine.label] = versions.setdefault(engine.tier, {})[engine.version] = GuardedBackend(
            engine.label, backends[engine.label], breaker(),
            TierLoad(tier.concurrency_slots * replicas, r.shed_ttft_target_s, clock, cold_slots=max(1, replicas)),
            tier.first_token_timeout_s, tier.total_timeout_s, tier.dispatch_timeout_s, tier.price, clock, engine.version)
    guarded |= {name: external(name, api) for name, api in config.external.items() if name in backends}
    tiers = {name: TierVersions(name, tier.default_version, versions[name], rng, clock, on_rollback, on_shadow)
             for name, tier in config.tiers.items()}
    cache = AnswerCache(r.answer_cache_max_entries, r.answer_cache_max_age_s, clock) if r.answer_cache_max_entries else None
    slots = {engine.label: engine.config.concurrency_slots for engine in engines}
    return CascadeRouter(guarded, tiers, config, clock, slots, cache)
