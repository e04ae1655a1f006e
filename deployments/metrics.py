"""Prometheus metrics through Ray's metrics endpoint (`ray.serve.metrics`, which tags each series
with its application, deployment and replica). Ray prefixes every name with `ray_`; the Grafana
dashboard in docs/grafana/ reads these names. vLLM's own engine metrics (`ray_vllm:*`) come from
its Ray stat logger in deployments/vllm_engine.py (the synthetic engine exports the same names).

Thin: the router fills a `Ledger` per request (serve_app.core.ledger) and hands it over here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from serve_app.core.ledger import Ledger
from serve_app.routing.circuit_breaker import BreakerState
from serve_app.routing.rollout import ShadowRecord

LATENCY_BUCKETS_S = [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300]
TOKEN_INTERVAL_BUCKETS_S = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2]
AGREEMENT_BUCKETS = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
CIRCUIT_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

ROUTER_METRICS = {
    "serve_app_requests": "Requests by route, the tier that answered, its version and outcome (serve_app.core.ledger.OUTCOMES).",
    "serve_app_attempts": "Tries at a backend by result: ok, or the error code that sent the request on (fallback reason).",
    "serve_app_ttft_seconds": "Time from the request reaching the router to its first answer chunk.",
    "serve_app_tpot_seconds": "Mean time per output token after the first, per request.",
    "serve_app_e2e_seconds": "Time from the request reaching the router to the end of its answer.",
    "serve_app_input_tokens": "Prompt tokens processed, per backend (every attempt, not only the one served).",
    "serve_app_output_tokens": "Tokens generated, per backend (every attempt).",
    "serve_app_cost_usd": "Estimated cost of the requests' attempts, per backend (configured prices).",
    "serve_app_replica_seconds": "Engine replica time the requests held (processor sharing), per backend.",
    "serve_app_circuit_state": "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open.",
    "serve_app_backend_in_flight": "Requests the router has in flight at each backend.",
    "serve_app_backend_queued": "Requests in flight beyond the backend's engine batch (queued in Ray Serve or vLLM).",
    "serve_app_backend_batch": "Requests each backend's engines run at once: per-replica batch times running replicas for a tier.",
    "serve_app_backend_admit_limit": "The adaptive admission limit of each backend (AIMD under concurrency_slots).",
    "serve_app_cascade_plans": "What the auto route ran per request (serve_app.routing.cascades.adaptive): speculative-<draft length>, strong, confidence, verified.",
    "serve_app_cascade_decisions": "The confidence and verified cascades' verdicts on cheap answers, by reason: confident, low_confidence, empty_answer, invalid_<check> (a structured answer that failed its validity check, serve_app.routing.validity).",
    "serve_app_canary_percent": "Share of a tier's requests its canary version serves now (0 after a rollback).",
    "serve_app_rollout_rollbacks": "Canaries the guard set back to 0 %, by tier and version.",
    "serve_app_shadow_requests": "Copies of requests for a shadow version, by outcome (ok, error, shed).",
    "serve_app_shadow_agreement": "Word-level agreement of a shadow's answer with the primary answer (1: the same).",
}
ENGINE_METRICS = {
    "serve_app_engine_start_seconds": "Seconds each phase of the replica's start took (import, fetch, page_cache_warm, engine_init).",
    "serve_app_engine_mbu": "Model bandwidth utilization of the last answer: bytes read per decode step / TPOT / peak.",
    "serve_app_engine_mfu": "Model FLOPs utilization of the last answer: 2 * parameters * batch / TPOT / peak.",
    "serve_app_engine_peak_memory_bandwidth_bytes": "The peak memory bandwidth MBU is measured against (config or probe).",
}
"""Every metric this project defines, with its help text; the dashboard test checks against these."""


class GaugeBoard:
    """The last value of every gauge series, sent each second from a daemon thread: Ray (2.60)
    drops a gauge series that was not set within two metric export intervals, so a value set once
    (a start phase, a circuit state while idle) would otherwise vanish from the endpoint. A new series
    is sent at once; a known one only by the thread, so a value set on every request (the router's backend
    loads) costs a dict write, not a Ray metric call: Ray exports every few seconds, the last value wins."""

    def __init__(self, interval_s: float = 1.0):
        self._values: dict[tuple, tuple[Any, float, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._interval_s = interval_s
        threading.Thread(target=self._refresh, name="gauge-refresh", daemon=True).start()

    def set(self, gauge, value: float, tags: dict[str, str]) -> None:
        key = (id(gauge), *sorted(tags.items()))
        with self._lock:
            new = key not in self._values
            self._values[key] = (gauge, value, tags)
        if new:
            gauge.set(value, tags)

    def drop(self, gauge, tags: dict[str, str]) -> None:
        """Stop re-sending a series: Ray drops it from the endpoint two export intervals later."""
        with self._lock:
            self._values.pop((id(gauge), *sorted(tags.items())), None)

    def _refresh(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                values = list(self._values.values())
            for gauge, value, tags in values:
                gauge.set(value, tags)


class RouterMetrics:
    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        def counter(name, *tags):
            return Counter(name, ROUTER_METRICS[name], tag_keys=tags)

        def histogram(name, buckets):
            return Histogram(name, ROUTER_METRICS[name], boundaries=buckets, tag_keys=("route", "served_by"))

        def gauge(name):
            return Gauge(name, ROUTER_METRICS[name], tag_keys=("backend",))

        self._requests = counter("serve_app_requests", "route", "served_by", "version", "outcome")
        self._attempts = counter("serve_app_attempts", "backend", "result")
        self._ttft = histogram("serve_app_ttft_seconds", LATENCY_BUCKETS_S)
        self._tpot = histogram("serve_app_tpot_seconds", TOKEN_INTERVAL_BUCKETS_S)
        self._e2e = histogram("serve_app_e2e_seconds", LATENCY_BUCKETS_S)
        self._input_tokens = counter("serve_app_input_tokens", "backend")
        self._output_tokens = counter("serve_app_output_tokens", "backend")
        self._cost = counter("serve_app_cost_usd", "backend")
        self._replica_seconds = counter("serve_app_replica_seconds", "backend")
        self._plans = counter("serve_app_cascade_plans", "plan")
        self._decisions = counter("serve_app_cascade_decisions", "reason")
        self._board = GaugeBoard()
        self._circuit = gauge("serve_app_circuit_state")
        self._in_flight = gauge("serve_app_backend_in_flight")
        self._queued = gauge("serve_app_backend_queued")
        self._batch = gauge("serve_app_backend_batch")
        self._limit = gauge("serve_app_backend_admit_limit")
        self._canary_percent = Gauge("serve_app_canary_percent", ROUTER_METRICS["serve_app_canary_percent"],
                                     tag_keys=("tier", "version"))
        self._canary_versions: dict[str, str] = {}
        self._rollbacks = counter("serve_app_rollout_rollbacks", "tier", "version")
        self._shadows = counter("serve_app_shadow_requests", "tier", "version", "outcome")
        self._agreement = Histogram("serve_app_shadow_agreement", ROUTER_METRICS["serve_app_shadow_agreement"],
                                    boundaries=AGREEMENT_BUCKETS, tag_keys=("tier", "version"))

    def record(self, ledger: Ledger) -> None:
        routing = ledger.routing
        route = routing.route if routing else ledger.route or "none"
        served_by = routing.served_by if routing and ledger.error is None else "none"
        version = routing.version if routing and routing.version and ledger.error is None else "none"
        self._requests.inc(1, {"route": route, "served_by": served_by, "version": version, "outcome": ledger.outcome})
        if routing is not None and routing.plan is not None:
            self._plans.inc(1, {"plan": routing.plan})
        if routing is not None and routing.confidence is not None and routing.reason:  # a buffered cascade judged
            self._decisions.inc(1, {"reason": routing.reason})
        latency_tags = {"route": route, "served_by": served_by}
        for histogram, value in ((self._ttft, ledger.ttft_s), (self._tpot, ledger.tpot_s), (self._e2e, ledger.e2e_s)):
            if value is not None and ledger.error is None and not ledger.cancelled:
                histogram.observe(value, latency_tags)
        for attempt in ledger.attempts:
            tags = {"backend": attempt.backend}
            self._attempts.inc(1, {**tags, "result": attempt.error or "ok"})
            for counter, value in ((self._input_tokens, attempt.input_tokens), (self._output_tokens, attempt.output_tokens),
                                   (self._cost, attempt.cost_usd), (self._replica_seconds, attempt.replica_seconds)):
                if value:
                    counter.inc(value, tags)

    def backends(self, states: dict[str, tuple[BreakerState, int, int, int]]) -> None:
        """Per backend: (circuit state, requests in flight, engine batch, admission limit)."""
        for backend, (state, in_flight, batch, limit) in states.items():
            tags = {"backend": backend}
            self._board.set(self._circuit, CIRCUIT_VALUE[state], tags)
            self._board.set(self._in_flight, in_flight, tags)
            self._board.set(self._queued, max(0, in_flight - batch), tags)
            self._board.set(self._batch, batch, tags)
            self._board.set(self._limit, limit, tags)

    def rollouts(self, status: dict[str, dict]) -> None:
        """The canary share of each tier (serve_app.routing.rollout.TierTraffic.status): its canary version's,
        0 after a rollback; a tier without a canary reports 0 under version "none"."""
        for tier, rollout in status.items():
            version = rollout["canary"] or "none"
            previous = self._canary_versions.get(tier)
            if previous is not None and previous != version:
                self._board.drop(self._canary_percent, {"tier": tier, "version": previous})
            self._canary_versions[tier] = version
            self._board.set(self._canary_percent, rollout["canary_percent"], {"tier": tier, "version": version})

    def rollback(self, tier: str, version: str) -> None:
        self._rollbacks.inc(1, {"tier": tier, "version": version})

    def shadow(self, tier: str, record: ShadowRecord) -> None:
        tags = {"tier": tier, "version": record.version}
        self._shadows.inc(1, {**tags, "outcome": record.outcome})
        if record.agreement is not None:
            self._agreement.observe(record.agreement, tags)


class EngineMetrics:
    def __init__(self, tier: str):
        from ray.serve.metrics import Gauge

        self._tags = {"tier": tier}
        self._board = GaugeBoard()
        self._gauges = {name: Gauge(name, text, tag_keys=("tier", "phase") if name.endswith("start_seconds") else ("tier",))
                        for name, text in ENGINE_METRICS.items()}

    def start_phase(self, phase: str, seconds: float) -> None:
        self._board.set(self._gauges["serve_app_engine_start_seconds"], seconds, {**self._tags, "phase": phase})

    def efficiency(self, mbu: float, mfu: float, peak_bytes_per_s: float) -> None:
        for name, value in (("serve_app_engine_mbu", mbu), ("serve_app_engine_mfu", mfu),
                            ("serve_app_engine_peak_memory_bandwidth_bytes", peak_bytes_per_s)):
            self._board.set(self._gauges[name], value, self._tags)
