"""Every backend the router may try, by label, with its capacity and health: the one owner of both.

The deployment reports what it learns from Ray Serve (running replicas, an engine's warm-up speed)
through `resize` and `seed_speed`; health and metrics read `states`.
"""

from __future__ import annotations

from serve_app.routing.backend import GuardedBackend
from serve_app.routing.circuit_breaker import BreakerState


class Fleet:
    def __init__(self, backends: dict[str, GuardedBackend], per_replica: dict[str, tuple[int, int]]):
        """`backends` by label (each engine version's and each external API's); `per_replica`, per engine
        version's label: one replica's engine batch and admission ceiling (`concurrency_slots`)."""
        self._backends = backends
        self._per_replica = per_replica

    def __getitem__(self, label: str) -> GuardedBackend:
        return self._backends[label]

    def resize(self, label: str, replicas: int) -> None:
        """An engine version's capacity follows its running replicas (autoscaling, a replica lost or
        replaced). While none runs, one replica's stands in, so that estimates stay finite."""
        batch, ceiling = self._per_replica[label]
        n = max(1, replicas)
        self._backends[label].load.resize(batch * n, n, ceiling * n)

    def seed_speed(self, label: str, ttft_s: float, tpot_s: float) -> None:
        """An engine version's warm-up figures: its speed before any live request (admission.TierLoad.seed)."""
        self._backends[label].load.seed(ttft_s, tpot_s)

    def states(self) -> dict[str, tuple[BreakerState, int, int, int]]:
        """Per backend: circuit state, requests in flight, engine batch, admission limit."""
        return {name: (b.breaker.state, b.load.in_flight, b.load.batch, int(b.load.limit))
                for name, b in self._backends.items()}
