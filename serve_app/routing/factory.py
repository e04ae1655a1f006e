"""Build a `CascadeRouter` from the config: one `GuardedBackend` per engine version and external API
(its breaker, load shedding, timeouts and price), one `TierVersions` per tier, the answer cache.

Config only describes; this is where the policies it names are built.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from serve_app.config import AppConfig, BackendLimits, PriceConfig, TierConfig
from serve_app.core.generation import Backend
from serve_app.observability.metering import Price
from serve_app.routing.admission import TierLoad
from serve_app.routing.answer_cache import AnswerCache
from serve_app.routing.backend import GuardedBackend
from serve_app.routing.circuit_breaker import CircuitBreaker
from serve_app.routing.fleet import Fleet
from serve_app.routing.rollout import RolledBack, ShadowRecord
from serve_app.routing.router import CascadeRouter
from serve_app.routing.versions import Tiers, TierVersions


def price_of(config: PriceConfig) -> Price:
    return Price(config.usd_per_replica_hour, config.usd_per_million_input_tokens, config.usd_per_million_output_tokens)


def build_router(backends: dict[str, Backend], config: AppConfig, clock: Callable[[], float],
                 rng: random.Random | None = None, on_rollback: Callable[[str, RolledBack], None] | None = None,
                 on_shadow: Callable[[str, ShadowRecord], None] | None = None) -> CascadeRouter:
    """`backends` by label: each engine version's (`AppConfig.engine_versions`) and each external API's.
    `on_rollback` and `on_shadow` tell the deployment about canary rollbacks and shadow results."""
    r = config.resilience
    rng = rng or random.Random()

    def guarded(name: str, limits: BackendLimits, batch: int, ceiling: int, price: PriceConfig,
                tier: TierConfig | None = None, version: str | None = None) -> GuardedBackend:
        start_s = tier.limits.expected_start_s if tier else 0.0
        from_zero = tier is not None and tier.scales_to_zero
        # A probe that never reports has failed by the time its first token is overdue.
        breaker = CircuitBreaker(r.breaker_failure_threshold, r.breaker_window_s, r.breaker_cooldown_s, clock,
                                 probe_timeout_s=limits.first_token_timeout_s + (start_s if from_zero else 0.0))
        load = TierLoad(batch, r.shed_ttft_target_s, clock, cold_slots=1, ceiling=ceiling)
        return GuardedBackend(name, backends[name], breaker, load, limits.first_token_timeout_s, limits.total_timeout_s,
                              tier.limits.dispatch_timeout_s if tier else None, price_of(price), clock, version,
                              expected_start_s=start_s, scales_from_zero=from_zero)

    fleet: dict[str, GuardedBackend] = {}
    versions: dict[str, dict[str, GuardedBackend]] = {}
    engines = config.engine_versions()  # validates every version: once
    for engine in engines:  # one replica's capacity; Fleet.resize scales it to the initial replicas below
        tier = engine.config
        fleet[engine.label] = versions.setdefault(engine.tier, {})[engine.version] = guarded(
            engine.label, tier.limits, tier.engine_batch, tier.limits.concurrency_slots, tier.price, tier, engine.version)
    fleet |= {name: guarded(name, api.limits, api.limits.concurrency_slots, api.limits.concurrency_slots, api.price)
              for name, api in config.external.items() if name in backends}
    tiers = Tiers({name: TierVersions(name, tier.default_version, versions[name], rng, clock, on_rollback, on_shadow)
                   for name, tier in config.tiers.items()})
    cache = AnswerCache(r.answer_cache_max_entries, r.answer_cache_max_age_s, clock) if r.answer_cache_max_entries else None
    owned = Fleet(fleet, {engine.label: (engine.config.engine_batch, engine.config.limits.concurrency_slots)
                          for engine in engines})
    for engine in engines:
        owned.resize(engine.label, engine.config.initial_replicas)
    return CascadeRouter(owned, tiers, config, clock, cache)
