"""Load shedding: admit a request to a tier only if it can expect its first token within the target.

Continuous batching lets a tier work on `slots` requests at once at about the TTFT recently observed;
requests beyond that wait for a slot, each slot freeing after about the recent mean service time
(Little's law). The estimate for one more request is therefore

    wait = ttft_ewma + max(0, in_flight + 1 - slots) * service_ewma / slots

and it is rejected (503 + Retry-After) when `wait` exceeds the target scaled by its priority, so low
priority traffic is shed first. Pure: the clock is injected, the router reports starts and ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PRIORITY_BUDGET = {"low": 0.5, "normal": 1.0, "high": 2.0}
"""Share of the TTFT target each priority may expect to wait before it is shed."""


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    estimated_wait_s: float
    retry_after_s: float = 0.0


class Ewma:
    def __init__(self, alpha: float):
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.alpha * sample + (1 - self.alpha) * self.value


class TierLoad:
    """In-flight requests and recent TTFT / service time of one tier, as the router sees them."""

    def __init__(self, slots: int, ttft_target_s: float, clock: Callable[[], float], alpha: float = 0.2):
        self.slots = slots
        self.ttft_target_s = ttft_target_s
        self.in_flight = 0
        self.ttft = Ewma(alpha)
        self.service = Ewma(alpha)
        self._clock = clock

    def estimate_wait_s(self) -> float:
        queued = max(0, self.in_flight + 1 - self.slots)
        if queued and self.service.value is None:
            return float("inf")  # no request has finished yet: nothing to promise a queued one
        return (self.ttft.value or 0.0) + queued * (self.service.value or 0.0) / self.slots

    def admit(self, priority: str = "normal") -> Admission:
        wait = self.estimate_wait_s()
        budget = self.ttft_target_s * PRIORITY_BUDGET[priority]
        if wait <= budget or self.in_flight == 0:  # an idle tier always takes one request
            return Admission(True, wait)
        # Retry when enough of the queue ahead should have drained to fit the budget.
        excess = wait - budget if wait != float("inf") else self.ttft_target_s
        return Admission(False, wait, retry_after_s=max(1.0, excess))

    def started(self) -> float:
        self.in_flight += 1
        return self._clock()

    def first_token(self, started_at: float) -> None:
        self.ttft.add(self._clock() - started_at)

    def finished(self, started_at: float, completed: bool) -> None:
        self.in_flight -= 1
        if completed:
            self.service.add(self._clock() - started_at)
