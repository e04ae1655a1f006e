"""Circuit breaker transitions with an injected clock."""

from serve_app.routing.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def breaker(clock):
    return CircuitBreaker(failure_threshold=3, window_s=10.0, cooldown_s=5.0, clock=clock)


def test_opens_after_threshold_failures_within_the_window():
    clock = Clock()
    b = breaker(clock)
    for _ in range(2):
        b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    assert b.retry_after_s() == 5.0


def test_failures_outside_the_window_do_not_count():
    clock = Clock()
    b = breaker(clock)
    b.record_failure()
    b.record_failure()
    clock.now = 11.0
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_success_closes():
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now = 4.9
    assert not b.allow()
    clock.now = 5.0
    assert b.allow() and b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()


def test_failed_probe_opens_again_for_a_full_cooldown():
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now = 6.0
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now = 10.9
    assert not b.allow()
    clock.now = 11.0
    assert b.allow()


def test_success_while_closed_keeps_it_closed():
    b = breaker(Clock())
    b.record_success()
    assert b.state is BreakerState.CLOSED


def test_an_abandoned_probe_frees_the_slot():
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now = 5.0
    assert b.allow() and not b.allow()
    b.abandon()
    assert b.allow()
