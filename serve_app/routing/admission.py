"""Load shedding: admit a request to a tier only if it can expect its first token within the target.

What a tier can take follows what its engines sustain, measured, not a hand-set slot count:

- Its engines run `batch` requests at once (each replica's `max_ongoing_requests`, at most vLLM's
  `max_num_seqs`, times the replicas running); Ray Serve queues the rest in the handle.
- While the batch has room, a newcomer waits about the TTFT recently observed on unqueued requests that
  shared the batch with about as many others as it will (prefill included): the TTFTs are kept per
  quarter of the batch in use, by the most requests in flight beside a request between its start and
  its first token. On a CPU, or a GPU near its compute bound, a request that prefills beside a full batch
  takes many times as long as one beside a few (6.9 s against 0.05 s on the local profile), and one
  average over both refused requests at a quarter of the batch after a burst (its TTFT average was past
  the target). While a quarter has no figure yet, the highest of the quarters below it stands in, else
  the average over all. Beyond the batch, it waits for as many running requests to
  finish as are queued ahead of it: each request's remaining work is its expected length (max_tokens
  times the share of their budget recent answers used) less what it produced, decoded at the recent
  time per output token, and the batch is replayed slot by slot (FIFO) until the newcomer's turn.
- A request is refused (503 + Retry-After) when that wait exceeds the target scaled by its priority,
  so low-priority traffic is shed first.
- An adaptive limit (AIMD, as Netflix's concurrency-limits) corrects the estimate with what happened:
  an admitted request whose first token came later than the target (or that timed out waiting for it)
  was a broken promise and cuts the limit by a tenth (once per congestion: the requests admitted before
  the last cut do not cut it again); one served in time while the limit was at least
  half used raises it by one. `concurrency_slots` (per replica) is the limit's upper bound and start.

Before any live request, the speeds come from the engine's warm-up (`seed`: TTFT of a full batch,
TPOT at that batch, measured when the replica started). A backend with no speed known at all (no
warm-up figures reached the router, no first token seen) is in slow start: it takes one request per
replica, and learns its TTFT from the first.

A multi-pass answer (the speculative cascade) holds one ticket per tier for its whole life
(`started(..., reserved=True)`): admitted once, its passes are never shed, and they teach nothing of
the tier's per-request speed (the answer's pace is not the engine's). Pure: the clock is injected;
the router reports each request's start, first token, progress and end through its `Ticket`.
"""

from __future__ import annotations

import heapq
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
    """Started with the batch full: its TTFT includes queueing and does not teach the TTFT estimate."""
    reserved: bool = False
    """Held by a multi-pass answer for its whole life (its passes are not admitted again)."""
    produced: int = 0
    first_token_at: float | None = None
    beside: int = 0
    """Requests in flight beside it when it started (its TTFT is learned at the batch share it shared)."""


OCCUPANCY_BANDS = 4
"""Shares of the batch (quarters) a TTFT figure is kept for."""
AIMD_BACKOFF = 0.9
"""The adaptive limit's cut after a broken promise."""


class TierLoad:
    """In-flight work, recent speed and admission limit of one tier, as the router sees them."""

    def __init__(self, batch: int, ttft_target_s: float | None, clock: Callable[[], float], alpha: float = 0.2,
                 cold_slots: int = 1, ceiling: int | None = None):
        """`batch`: requests its engines run at once; `ceiling`: the most admitted at once (the adaptive
        limit's bound, `batch` if not given); `cold_slots`: in flight at most while no speed is known."""
        self._batch = batch
        self._ceiling = ceiling or batch
        self._cold_slots = cold_slots
        self.limit = float(self._ceiling)
        """The adaptive concurrency limit on admitted requests (AIMD within [cold_slots, ceiling])."""
        self.ttft_target_s = ttft_target_s
        self.ttft = Ewma(alpha)
        """Seconds from dispatch to first token of requests that found room in the batch."""
        self._ttft_by_share = [Ewma(alpha) for _ in range(OCCUPANCY_BANDS)]
        """The same, per quarter of the batch in use beside them (`_band`)."""
        self.tpot = Ewma(alpha)
        """Seconds per output token after the first, at the batch sizes recently seen."""
        self.length_share = Ewma(alpha, initial=1.0)
        """Completion tokens over max_tokens of recent answers: the share of its budget a request uses."""
        self._in_flight: dict[Ticket, None] = {}  # in order of start (FIFO: the batch, then the queue)
        self._last_cut_at = -math.inf
        self._clock = clock

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def ceiling(self) -> int:
        return self._ceiling

    def holds(self, ticket: Ticket) -> bool:
        return ticket in self._in_flight

    def resize(self, batch: int, cold_slots: int, ceiling: int | None = None) -> None:
        """The backend's capacity changed (replicas started or lost): its `batch` in all, its `ceiling`,
        and `cold_slots` while no speed is known. The limit keeps its share of the ceiling."""
        ceiling = ceiling or batch
        self.limit = max(float(cold_slots), self.limit * ceiling / self._ceiling)
        self._batch, self._ceiling, self._cold_slots = batch, ceiling, cold_slots

    def _expected(self, ticket: Ticket) -> float:
        return max(1.0, ticket.budget_tokens * self.length_share.value - ticket.produced)

    def work_tokens(self) -> float:
        """Output tokens the in-flight requests are still expected to produce."""
        return sum(self._expected(t) for t in self._in_flight)

    def seed(self, ttft_s: float, tpot_s: float) -> None:
        """Speeds measured before any live request (the engine's warm-up at a full batch); the live
        requests' own figures replace them as they come."""
        if self.ttft.value is None:
            self.ttft.add(ttft_s)
        if self.tpot.value is None:
            self.tpot.add(tpot_s)

    def estimate_wait_s(self) -> float:
        """A newcomer's expected time to first token."""
        if self.ttft.value is None:  # speed unknown: slow start, and no queue
            return 0.0 if self.in_flight < min(self._cold_slots, self._batch) else float("inf")
        if self.slot_free():
            return self.ttft_beside(self.in_flight)
        if self.tpot.value is None:
            return float("inf")  # no request has finished yet: nothing to promise a queued one
        # Replay the batch: each slot frees when its request ends and takes the next queued one, FIFO.
        tickets = list(self._in_flight)
        ends = [self._expected(t) for t in tickets[:self._batch]]
        heapq.heapify(ends)
        for ticket in tickets[self._batch:]:
            heapq.heappush(ends, heapq.heappop(ends) + self._expected(ticket))
        return self.ttft_beside(self._batch - 1) + heapq.heappop(ends) * self.tpot.value

    def _band(self, beside: int) -> int:
        return min(OCCUPANCY_BANDS - 1, beside * OCCUPANCY_BANDS // max(1, self._batch))

    def ttft_beside(self, beside: int) -> float | None:
        """An unqueued request's expected TTFT with `beside` others in flight: its quarter of the batch's
        recent figure, else the highest of the quarters below (TTFT grows with the batch), else the
        average over all."""
        band = self._band(beside)
        if (own := self._ttft_by_share[band].value) is not None:
            return own
        lower = [e.value for e in self._ttft_by_share[:band] if e.value is not None]
        return max(lower) if lower else self.ttft.value

    def admit(self, priority: str = "normal") -> Admission:
        wait = self.estimate_wait_s()
        if self.ttft_target_s is None:  # shedding is off: the load is only observed
            return Admission(True, wait)
        if self.in_flight == 0:  # an idle tier always takes one request
            return Admission(True, wait)
        if self.in_flight >= int(self.limit):  # recent promises were broken at this load
            return Admission(False, wait, retry_after_s=1.0)
        budget = self.ttft_target_s * PRIORITY_BUDGET[priority]
        if wait <= budget:
            return Admission(True, wait)
        # Retry when enough of the work ahead should have drained to fit the budget.
        excess = wait - budget if wait != float("inf") else self.ttft_target_s
        return Admission(False, wait, retry_after_s=max(1.0, excess))

    def slot_free(self) -> bool:
        """Room in the engines' batch: a newcomer starts at once."""
        return self.in_flight < self._batch

    def started(self, max_tokens: int | None, reserved: bool = False) -> Ticket:
        ticket = Ticket(max_tokens or UNBOUNDED_BUDGET_TOKENS, self._clock(), queued=not self.slot_free(),
                        reserved=reserved, beside=self.in_flight)
        self._in_flight[ticket] = None
        return ticket

    def first_token(self, ticket: Ticket) -> None:
        ticket.first_token_at = self._clock()
        if not ticket.queued:
            ttft_s = ticket.first_token_at - ticket.started_at
            self.ttft.add(ttft_s)
            # A request of a burst started beside few but prefilled beside all: the most it shared the batch with.
            self._ttft_by_share[self._band(max(ticket.beside, self.in_flight - 1))].add(ttft_s)
        self._kept(ticket)

    def _kept(self, ticket: Ticket) -> None:
        """AIMD on the promise each admission made: its first token within the target. The requests admitted
        before a cut broke their promises in the same congestion (a burst admitted at once is late all
        together): only one admitted after the last cut cuts again, as TCP halves its window once per
        round trip, not once per lost packet."""
        if self.ttft_target_s is None:
            return
        now = self._clock()
        if now - ticket.started_at > self.ttft_target_s:
            if ticket.started_at >= self._last_cut_at:
                self.limit = max(float(self._cold_slots), self.limit * AIMD_BACKOFF)
                self._last_cut_at = now
        elif self.in_flight * 2 >= self.limit:
            self.limit = min(float(self._ceiling), self.limit + 1)

    def restored(self) -> None:
        """The backend serves again after having no running replica: the broken promises that cut its limit
        were the lost replica's, not the load's, so the limit starts again from its ceiling."""
        self.limit = float(self._ceiling)

    def finished(self, ticket: Ticket, completed: bool, faulted: bool = False) -> None:
        """`faulted`: the backend failed it (its breaker counted the failure), which teaches nothing of its
        speed and is no broken promise of the admission."""
        if self._in_flight.pop(ticket, False) is False:
            return  # already finished
        if faulted:
            return
        # A reservation held through an answer it never served waited for no token: no promise was broken.
        if ticket.first_token_at is None and not completed and not ticket.reserved:
            waited = self._clock() - ticket.started_at
            if self.ttft_target_s is not None and waited > self.ttft_target_s:
                self._kept(ticket)  # it gave up waiting for its first token: a broken promise
            return
        if not completed or ticket.reserved or ticket.first_token_at is None:
            return
        self.length_share.add(min(1.0, ticket.produced / ticket.budget_tokens))
        if ticket.produced > 1:
            self.tpot.add((self._clock() - ticket.first_token_at) / (ticket.produced - 1))
