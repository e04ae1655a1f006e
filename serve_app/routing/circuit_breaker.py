"""A circuit breaker per backend: fail fast while a backend keeps failing, probe it after a cool-down.

closed --(failure_threshold failures within window_s)--> open --(cooldown_s passed)--> half_open
half_open lets exactly one probe through: success closes the breaker, failure opens it again.

A request goes through the breaker with a `Pass` (`enter`), which takes its verdict once: `succeeded`,
`failed`, or none at all. A pass whose request ended without a verdict (refused later, cancelled, an
exception on the way) gives its probe back when it is released, in a `finally` or as a context manager,
so no path can keep the half-open probe by forgetting to report. A probe that is never released at all
expires after `probe_timeout_s` (the backend's first-token timeout) and counts as a failure then.
`half_open` lets a probe through at once when a new replica of the backend is known to be up.
Pure: the clock is injected.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Pass:
    """One request's way through the breaker: its verdict is taken once; `release` ends it without one."""

    __slots__ = ("_breaker", "probe", "_done")

    def __init__(self, breaker: CircuitBreaker, probe: bool):
        self._breaker = breaker
        self.probe = probe
        """The half-open probe: the one request whose verdict closes or opens the circuit again."""
        self._done = False

    def succeeded(self) -> None:
        if self._end():
            self._breaker._succeeded()

    def failed(self) -> None:
        if self._end():
            self._breaker._failed()

    def release(self) -> None:
        """No verdict (the request was refused later, cancelled, or its failure was not the backend's):
        a probe's slot is free again for the next request."""
        if self._end():
            self._breaker._released(self)

    def _end(self) -> bool:
        done, self._done = self._done, True
        return not done

    def __enter__(self) -> Pass:
        return self

    def __exit__(self, *_) -> None:
        self.release()


class CircuitBreaker:
    def __init__(self, failure_threshold: int, window_s: float, cooldown_s: float, clock: Callable[[], float],
                 probe_timeout_s: float = math.inf):
        self._threshold = failure_threshold
        self._window_s = window_s
        self._cooldown_s = cooldown_s
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._failures: deque[float] = deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe: Pass | None = None
        self._probe_since = 0.0

    @property
    def state(self) -> BreakerState:
        self._expire(self._clock())
        return self._state

    @property
    def probing(self) -> bool:
        """A half-open probe is out (and has not expired)."""
        self._expire(self._clock())
        return self._probe is not None

    def enter(self) -> Pass | None:
        """A pass for a request to the backend now, or None while the circuit is open (in half-open state,
        only the one probe gets a pass)."""
        now = self._clock()
        self._expire(now)
        if self._state is BreakerState.CLOSED:
            return Pass(self, probe=False)
        if self._state is BreakerState.OPEN and now - self._opened_at >= self._cooldown_s:
            self._state = BreakerState.HALF_OPEN
        if self._state is BreakerState.HALF_OPEN and self._probe is None:
            self._probe, self._probe_since = Pass(self, probe=True), now
            return self._probe
        return None

    def half_open(self) -> None:
        """A new replica of the backend is up (Ray Serve reports it running): probe it at once instead of
        waiting out the cool-down."""
        if self.state is BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN

    @property
    def failures(self) -> int:
        """Failures counted towards opening the circuit: those within the window, while closed."""
        self._forget_old(self._clock())
        return len(self._failures)

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._cooldown_s - (self._clock() - self._opened_at))
        if self._probe is not None:  # half-open, its probe out: at most until the probe expires
            return min(self._cooldown_s, max(0.0, self._probe_since + self._probe_timeout_s - self._clock()))
        return 0.0

    def failed_later(self) -> None:
        """A request that had its pass's verdict (its first token) failed afterwards (mid-answer)."""
        self._failed()

    def _succeeded(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._state, self._probe = BreakerState.CLOSED, None
            self._failures.clear()

    def _failed(self) -> None:
        now = self._clock()
        if self._state is BreakerState.OPEN:
            return  # already open: nothing more to learn until the probe
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        self._forget_old(now)
        if len(self._failures) >= self._threshold:
            self._open(now)

    def _released(self, of: Pass) -> None:
        if of is self._probe:
            self._probe = None

    def _expire(self, now: float) -> None:
        """A probe out for longer than the backend's first-token timeout never reported: it failed then."""
        if self._probe is not None and now - self._probe_since >= self._probe_timeout_s:
            self._open(self._probe_since + self._probe_timeout_s)

    def _forget_old(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self._window_s:
            self._failures.popleft()

    def _open(self, at: float) -> None:
        self._state, self._opened_at, self._probe = BreakerState.OPEN, at, None
        self._failures.clear()
