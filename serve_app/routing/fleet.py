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
        replaced). While none runs, one replica's stands in, so that estimates stay finite, and the backend
        refuses as starting (GuardedBackend.replicas_running)."""
        batch, ceiling = self._per_replica[label]
        n = max(1, replicas)
        backend = self._backends[label]
        backend.load.resize(batch * n, n, ceiling * n)
        backend.replicas_running(replicas)

    def starts(self, label: str) -> None:
        """The router starts: no replica of this engine version counts as running until Ray Serve reports
        one or its engine answers (`serving`)."""
        self._backends[label].starts()

    def serving(self, label: str) -> None:
        """An engine version answered (its model info): at least one of its replicas runs."""
        if not self._backends[label].ready:
            self.resize(label, 1)

    def never_ran(self) -> list[str]:
        """Backends that have not had a running replica yet (the app is starting)."""
        return [name for name, b in self._backends.items() if not b.ever_ran]

    def starting(self) -> dict[str, float]:
        """Backends with no running replica, each with the seconds until one should have started."""
        return {name: b.starting_retry_after_s() for name, b in self._backends.items() if not b.ready}

    def seed_speed(self, label: str, ttft_s: float, tpot_s: float) -> None:
        """An engine version's warm-up figures: its speed before any live request (admission.TierLoad.seed)."""
        self._backends[label].load.seed(ttft_s, tpot_s)

    def states(self) -> dict[str, tuple[BreakerState, int, int, int]]:
        """Per backend: circuit state, requests in flight, engine batch, admission limit."""
        return {name: (b.breaker.state, b.load.in_flight, b.load.batch, int(b.load.limit))
                for name, b in self._backends.items()}
