"""A circuit breaker per backend: fail fast while a backend keeps failing, probe it after a cool-down.

closed --(failure_threshold failures within window_s)--> open --(cooldown_s passed)--> half_open
half_open lets exactly one probe through: success closes the breaker, failure opens it again.
Pure: the clock is injected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int, window_s: float, cooldown_s: float, clock: Callable[[], float]):
        self._threshold = failure_threshold
        self._window_s = window_s
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures: deque[float] = deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a request go to the backend now? In half-open state, only the one probe may."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown_s:
            self._state, self._probing = BreakerState.HALF_OPEN, False
        if self._state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    @property
    def failures(self) -> int:
        """Failures counted towards opening the circuit: those within the window, while closed."""
        self._forget_old(self._clock())
        return len(self._failures)

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._cooldown_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._state, self._probing = BreakerState.CLOSED, False
            self._failures.clear()

    def abandon(self) -> None:
        """The request ended with no verdict on the backend (the caller went away): free the probe slot."""
        self._probing = False

    def record_failure(self) -> None:
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        self._forget_old(now)
        if len(self._failures) >= self._threshold:
            self._open(now)

    def _forget_old(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self._window_s:
            self._failures.popleft()

    def _open(self, now: float) -> None:
        self._state, self._opened_at, self._probing = BreakerState.OPEN, now, False
        self._failures.clear()
