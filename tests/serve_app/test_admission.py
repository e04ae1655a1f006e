"""Load-shedding decisions from in-flight counts and observed times."""

import pytest

from serve_app.admission import TierLoad


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def loaded(in_flight, ttft_s=1.0, service_s=8.0, slots=4, target_s=5.0):
    load = TierLoad(slots=slots, ttft_target_s=target_s, clock=Clock())
    load.ttft.add(ttft_s)
    load.service.add(service_s)
    load.in_flight = in_flight
    return load


def test_idle_tier_admits_even_with_no_history():
    load = TierLoad(slots=4, ttft_target_s=1.0, clock=Clock())
    assert load.admit().admitted


def test_within_slots_the_wait_is_the_observed_ttft():
    assert loaded(in_flight=3).estimate_wait_s() == pytest.approx(1.0)
    assert loaded(in_flight=3).admit().admitted


def test_queue_beyond_slots_adds_drain_time_and_is_shed_past_the_target():
    # 4 slots busy, 2 queued ahead: the 7th waits for 3 slot turnovers of 8 s / 4 slots.
    load = loaded(in_flight=6)
    assert load.estimate_wait_s() == pytest.approx(1.0 + 3 * 8.0 / 4)
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == pytest.approx(2.0)


def test_low_priority_is_shed_before_normal_and_high_after():
    load = loaded(in_flight=5)  # wait 3 s against a 5 s target
    assert not load.admit("low").admitted
    assert load.admit("normal").admitted
    assert loaded(in_flight=7).admit("high").admitted  # wait 7 s, high may wait up to 10 s


def test_times_are_learned_from_reported_requests():
    clock = Clock()
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=clock, alpha=1.0)
    started = load.started()
    clock.now = 0.5
    load.first_token(started)
    clock.now = 4.0
    load.finished(started, completed=True)
    assert (load.ttft.value, load.service.value, load.in_flight) == (0.5, 4.0, 0)


def test_failed_requests_do_not_teach_service_time():
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=Clock())
    load.finished(load.started(), completed=False)
    assert load.service.value is None and load.in_flight == 0


def test_without_history_only_the_slots_are_admitted():
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=Clock())
    load.in_flight = 1
    assert load.admit().admitted
    load.in_flight = 2
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == 5.0
