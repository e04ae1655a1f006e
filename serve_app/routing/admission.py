"""Load shedding: admit a request to a tier only if it can expect its first token within the target.

A tier works on `slots` requests at once (its deployment's `max_ongoing_requests` times its replicas;
Ray Serve queues the rest in the handle). While a slot is free, a newcomer waits about the TTFT
recently observed on an unqueued request. Beyond that it waits for the work ahead of it to drain.
That work is counted in tokens, so a queue of long answers weighs more than one of short ones:

    work = sum over in-flight requests of (expected length - tokens produced so far)
    expected length = max_tokens * (recent completion tokens / max_tokens)   # EOS ends most early
    wait = ttft + work * tpot / slots                                       # slots decode in parallel

and the request is rejected (503 + Retry-After) when `wait` exceeds the target scaled by its priority,
so low-priority traffic is shed first.

Before any live request, the speeds come from the engine's warm-up (`seed`: TTFT of a full batch of
slots, TPOT at that batch, measured when the replica started). A backend with no speed known at all
(no warm-up figures reached the router, no first token seen) is in slow start: it takes one request
per replica, since nothing says that a full batch of them would start within the target, and learns
its TTFT from the first. Pure: the clock is injected; the router reports each request's start, first
token, progress and end through its `Ticket`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.core.errors import InvalidRequest

PRIORITY_BUDGET = {"low": 0.5, "normal": 1.0, "high": 2.0}
"""Share of the TTFT target each priority may expect to wait before it is shed."""
UNBOUNDED_BUDGET_TOKENS = 1024
"""Token budget assumed for a request without max_tokens (it may run to the end of the context)."""


def check_request(priority: str, timeout_s: float | None) -> None:
    """A caller's priority and deadline, checked before any routing (400 naming the header if wrong)."""
    if priority not in PRIORITY_BUDGET:
        raise InvalidRequest(f"priority must be one of {sorted(PRIORITY_BUDGET)}", param="x-priority")
    if timeout_s is not None and not (0 < timeout_s < math.inf):
        raise InvalidRequest("the request timeout must be a positive number of seconds", param="x-request-timeout")


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    estimated_wait_s: float
    retry_after_s: float = 0.0


class Ewma:
    def __init__(self, alpha: float, initial: float | None = None):
        self.alpha = alpha
        self.value = initial

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.alpha * sample + (1 - self.alpha) * self.value


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted request as its tier's load sees it."""

    budget_tokens: int
    started_at: float
    queued: bool
    """Started with every slot busy: its TTFT includes queueing and does not teach the TTFT estimate."""
    produced: int = 0
    first_token_at: float | None = None


class TierLoad:
    """In-flight work and recent speed of one tier, as the router sees them."""

    def __init__(self, slots: int, ttft_target_s: float | None, clock: Callable[[], float], alpha: float = 0.2,
                 cold_slots: int = 1):
        self._slots = slots
        self._cold_slots = cold_slots
        """In flight at most while no speed is known (slow start): one per replica."""
        self.ttft_target_s = ttft_target_s
        self.ttft = Ewma(alpha)
        """Seconds from dispatch to first token of requests that found a free slot."""
        self.tpot = Ewma(alpha)
        """Seconds per output token after the first, at the batch sizes recently seen."""
        self.length_share = Ewma(alpha, initial=1.0)
        """Completion tokens over max_tokens of recent answers: the share of its budget a request uses."""
        self._in_flight: set[Ticket] = set()
        self._clock = clock

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def slots(self) -> int:
        return self._slots

    def resize(self, slots: int, cold_slots: int) -> None:
        """The backend's capacity changed (replicas started or lost): `slots` in all, and `cold_slots`
        while no speed is known."""
        self._slots, self._cold_slots = slots, cold_slots

    def work_tokens(self) -> float:
        """Output tokens the in-flight requests are still expected to produce."""
        share = self.length_share.value
        return sum(max(1.0, t.budget_tokens * share - t.produced) for t in self._in_flight)

    def seed(self, ttft_s: float, tpot_s: float) -> None:
        """Speeds measured before any live request (the engine's warm-up at a full batch); the live
        requests' own figures replace them as they come."""
        if self.ttft.value is None:
            self.ttft.add(ttft_s)
        if self.tpot.value is None:
            self.tpot.add(tpot_s)

    def estimate_wait_s(self) -> float:
        if self.ttft.value is None:  # speed unknown: slow start, and no queue
            return 0.0 if self.in_flight < min(self._cold_slots, self._slots) else float("inf")
        if self.slot_free():
            return self.ttft.value
        if self.tpot.value is None:
            return float("inf")  # no request has finished yet: nothing to promise a queued one
        return self.ttft.value + self.work_tokens() * self.tpot.value / self._slots

    def admit(self, priority: str = "normal") -> Admission:
        wait = self.estimate_wait_s()
        if self.ttft_target_s is None:  # shedding is off: the load is only observed
            return Admission(True, wait)
        budget = self.ttft_target_s * PRIORITY_BUDGET[priority]
        if wait <= budget or self.in_flight == 0:  # an idle tier always takes one request
            return Admission(True, wait)
        # Retry when enough of the work ahead should have drained to fit the budget.
        excess = wait - budget if wait != float("inf") else self.ttft_target_s
        return Admission(False, wait, retry_after_s=max(1.0, excess))

    def slot_free(self) -> bool:
        return self.in_flight < self._slots

    def started(self, max_tokens: int | None) -> Ticket:
        ticket = Ticket(max_tokens or UNBOUNDED_BUDGET_TOKENS, self._clock(), queued=not self.slot_free())
        self._in_flight.add(ticket)
        return ticket

    def first_token(self, ticket: Ticket) -> None:
        ticket.first_token_at = self._clock()
        if not ticket.queued:
            self.ttft.add(ticket.first_token_at - ticket.started_at)

    def finished(self, ticket: Ticket, completed: bool) -> None:
        self._in_flight.discard(ticket)
        if not completed or ticket.first_token_at is None:
            return
        self.length_share.add(min(1.0, ticket.produced / ticket.budget_tokens))
        if ticket.produced > 1:
            self.tpot.add((self._clock() - ticket.first_token_at) / (ticket.produced - 1))
