"""Circuit breaker transitions with an injected clock, and every way a pass (the half-open probe) can end."""

from serve_app.routing.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def breaker(clock, probe_timeout_s=30.0):
    return CircuitBreaker(failure_threshold=3, window_s=10.0, cooldown_s=5.0, clock=clock,
                          probe_timeout_s=probe_timeout_s)


def fail(b, times=1):
    for _ in range(times):
        b.enter().failed()


def opened(clock):
    b = breaker(clock)
    fail(b, 3)
    assert b.state is BreakerState.OPEN
    return b


def test_opens_after_threshold_failures_within_the_window():
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    assert b.state is BreakerState.CLOSED and b.enter() is not None
    fail(b)
    assert b.state is BreakerState.OPEN and b.enter() is None
    assert b.retry_after_s() == 5.0


def test_failures_outside_the_window_do_not_count():
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    clock.now = 11.0
    fail(b)
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_success_closes():
    clock = Clock()
    b = opened(clock)
    clock.now = 4.9
    assert b.enter() is None
    clock.now = 5.0
    probe = b.enter()
    assert probe is not None and probe.probe and b.state is BreakerState.HALF_OPEN
    assert b.enter() is None  # only one probe at a time
    probe.succeeded()
    assert b.state is BreakerState.CLOSED and b.enter() is not None and b.enter() is not None


def test_failed_probe_opens_again_for_a_full_cooldown():
    clock = Clock()
    b = opened(clock)
    clock.now = 6.0
    b.enter().failed()
    assert b.state is BreakerState.OPEN and b.enter() is None
    clock.now = 10.9
    assert b.enter() is None
    clock.now = 11.0
    assert b.enter() is not None


def test_success_while_closed_keeps_it_closed():
    b = breaker(Clock())
    b.enter().succeeded()
    assert b.state is BreakerState.CLOSED


def test_a_released_probe_frees_the_slot_for_the_next_request():
    clock = Clock()
    b = opened(clock)
    clock.now = 5.0
    probe = b.enter()
    assert b.enter() is None
    probe.release()
    assert b.state is BreakerState.HALF_OPEN and not b.probing
    assert b.enter() is not None


def test_a_probe_used_as_a_context_manager_is_given_back_whatever_raises():
    clock = Clock()
    b = opened(clock)
    clock.now = 5.0
    try:
        with b.enter():
            raise RuntimeError("an exception before the request was sent")
    except RuntimeError:
        pass
    assert not b.probing and b.enter() is not None


def test_only_the_first_verdict_of_a_pass_counts():
    clock = Clock()
    b = opened(clock)
    clock.now = 5.0
    probe = b.enter()
    probe.succeeded()
    probe.failed()  # ignored: the pass had its verdict
    probe.release()
    assert b.state is BreakerState.CLOSED


def test_a_probe_that_never_reports_expires_as_a_failure_after_the_first_token_timeout():
    clock = Clock()
    b = opened(clock)
    clock.now = 5.0
    assert b.enter() is not None  # taken and then forgotten: no verdict, never released
    clock.now = 34.9
    assert b.state is BreakerState.HALF_OPEN and b.enter() is None
    clock.now = 35.0  # 30 s later: it failed then, and the breaker is open for a cool-down from there
    assert b.state is BreakerState.OPEN and b.retry_after_s() == 5.0
    clock.now = 40.0
    probe = b.enter()
    assert probe is not None
    probe.succeeded()
    assert b.state is BreakerState.CLOSED


def test_a_new_replica_half_opens_the_circuit_at_once():
    clock = Clock()
    b = opened(clock)
    clock.now = 1.0
    b.half_open()
    assert b.state is BreakerState.HALF_OPEN
    probe = b.enter()
    assert probe is not None and probe.probe
    probe.succeeded()
    assert b.state is BreakerState.CLOSED


def test_half_open_does_nothing_to_a_closed_breaker_or_to_a_probe_in_flight():
    clock = Clock()
    b = breaker(clock)
    b.half_open()
    assert b.state is BreakerState.CLOSED
    fail(b, 3)
    clock.now = 5.0
    b.enter()
    b.half_open()
    assert b.probing and b.enter() is None


def test_a_late_failure_of_a_request_admitted_before_the_circuit_opened():
    clock = Clock()
    b = breaker(clock)
    old = b.enter()
    fail(b, 3)
    old.failed()  # the circuit is open already: nothing more to learn
    clock.now = 5.0
    assert b.enter() is not None


def test_a_failure_after_the_first_token_counts():
    b = breaker(Clock())
    for _ in range(3):
        b.enter().succeeded()
        b.failed_later()
    assert b.state is BreakerState.OPEN


def test_retry_after_while_a_probe_is_out_is_bounded_by_the_cool_down():
    clock = Clock()
    b = opened(clock)
    clock.now = 5.0
    b.enter()
    assert b.retry_after_s() == 5.0
