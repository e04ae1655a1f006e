"""What one request costs: the share of a replica it held, and the price of that share or of its tokens.

A self-hosted replica costs the same per hour whatever it does, and batching divides that hour among
the requests it serves at once. An engine replica meters each request by processor sharing: while
`n` requests are in the replica, each holds `1/n` of it, so a request's replica-seconds are the
integral of `1/n(t)` over its life. Over any busy period the shares add up to the replica's busy
time, so per-request costs add up to what the busy replicas cost. Idle time is paid for but belongs
to no request: the fleet cost (replicas x hours x price) stays the number to budget with.

An API backend is priced by its tokens. Pure: no Ray, no vLLM; a clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class ProcessorSharing:
    """Replica-seconds per request under processor sharing, O(1) per event.

    A virtual clock advances by `dt / n` while `n` requests are in; a request's share is the virtual
    time that passed between its `join` and now (the same trick as virtual time in fair queueing).
    """

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._virtual = 0.0
        self._last = clock()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    def _advance(self) -> float:
        now = self._clock()
        if self._running:
            self._virtual += (now - self._last) / self._running
        self._last = now
        return self._virtual

    def join(self) -> float:
        """A request came in; returns its mark."""
        mark = self._advance()
        self._running += 1
        return mark

    def held(self, mark: float) -> float:
        """Replica-seconds the request that joined at `mark` has held so far."""
        return self._advance() - mark

    def leave(self, mark: float) -> float:
        """The request left; returns the replica-seconds it held in all."""
        held = self.held(mark)
        self._running -= 1
        return held


@dataclass(frozen=True, slots=True)
class Price:
    """A backend's prices: replica time for a self-hosted tier, tokens for an API (either may be 0)."""

    usd_per_replica_hour: float = 0.0
    usd_per_million_input_tokens: float = 0.0
    usd_per_million_output_tokens: float = 0.0

    def of(self, input_tokens: int, output_tokens: int, replica_seconds: float) -> float:
        return (replica_seconds * self.usd_per_replica_hour / 3600
                + input_tokens * self.usd_per_million_input_tokens / 1e6
                + output_tokens * self.usd_per_million_output_tokens / 1e6)


FREE = Price()
