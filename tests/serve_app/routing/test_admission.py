"""Load-shedding decisions from in-flight work and observed speed."""

import pytest

from serve_app.routing.admission import UNBOUNDED_BUDGET_TOKENS, TierLoad


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def loaded(budgets, ttft_s=1.0, tpot_s=0.1, slots=4, target_s=5.0):
    """A tier with requests of the given max_tokens in flight, none of which has produced a token."""
    load = TierLoad(slots=slots, ttft_target_s=target_s, clock=Clock())
    load.ttft.add(ttft_s)
    load.tpot.add(tpot_s)
    for budget in budgets:
        load.started(budget)
    return load


def test_idle_tier_admits_even_with_no_history():
    load = TierLoad(slots=4, ttft_target_s=1.0, clock=Clock())
    assert load.admit().admitted


def test_within_slots_the_wait_is_the_observed_ttft():
    load = loaded([100] * 3)
    assert load.estimate_wait_s() == pytest.approx(1.0)
    assert load.admit().admitted


def test_with_every_slot_busy_the_wait_is_the_work_ahead_over_the_slots():
    # 6 requests of 40 tokens: 240 tokens at 0.1 s each, decoded 4 at a time.
    load = loaded([40] * 6)
    assert load.estimate_wait_s() == pytest.approx(1.0 + 240 * 0.1 / 4)
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == pytest.approx(2.0)


def test_the_estimate_is_length_aware():
    short, long = loaded([8] * 6), loaded([400] * 6)
    assert short.admit().admitted
    assert not long.admit().admitted
    assert long.estimate_wait_s() > 10 * short.estimate_wait_s() - 10


def test_tokens_already_produced_are_not_counted_again():
    load = loaded([40] * 3)
    ticket = load.started(40)
    before = load.work_tokens()
    ticket.produced = 30
    assert load.work_tokens() == pytest.approx(before - 30)


def test_low_priority_is_shed_before_normal_and_high_after():
    load = loaded([12] * 8)  # wait 1 + 96 * 0.1 / 4 = 3.4 s against a 5 s target
    assert not load.admit("low").admitted
    assert load.admit("normal").admitted
    assert loaded([30] * 8).admit("high").admitted  # wait 7 s, high may wait up to 10 s


def test_speed_and_length_are_learned_from_reported_requests():
    clock = Clock()
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=clock, alpha=1.0)
    ticket = load.started(max_tokens=100)
    clock.now = 0.5
    load.first_token(ticket)
    ticket.produced = 11
    clock.now = 1.5
    load.finished(ticket, completed=True)
    assert load.ttft.value == 0.5
    assert load.tpot.value == pytest.approx(0.1)
    assert load.length_share.value == pytest.approx(0.11)
    assert load.in_flight == 0


def test_learned_length_share_scales_the_expected_work():
    load = loaded([100] * 4)
    load.length_share.value = 0.25  # answers recently used a quarter of their max_tokens
    assert load.work_tokens() == pytest.approx(4 * 25)


def test_a_queued_request_does_not_teach_the_unqueued_ttft():
    clock = Clock()
    load = TierLoad(slots=1, ttft_target_s=5.0, clock=clock, alpha=1.0)
    first = load.started(10)
    queued = load.started(10)
    clock.now = 0.2
    load.first_token(first)
    clock.now = 9.0
    load.first_token(queued)
    assert load.ttft.value == pytest.approx(0.2)


def test_failed_requests_teach_nothing():
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=Clock())
    load.finished(load.started(10), completed=False)
    assert load.tpot.value is None and load.length_share.value == 1.0 and load.in_flight == 0


def test_speed_unknown_is_slow_start_one_per_replica_then_the_free_slots():
    clock = Clock()
    load = TierLoad(slots=8, ttft_target_s=5.0, clock=clock, cold_slots=2)  # two replicas, nothing known
    first, _ = load.started(10), load.started(10)
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == 5.0  # a sudden burst: refused at once
    clock.now = 0.3
    load.first_token(first)  # the first token: its TTFT is known, the free slots open
    assert load.admit().admitted
    for _ in range(6):
        load.started(10)
    assert not load.admit().admitted  # queueing needs a finished request's TPOT first
    load.finished(first, completed=True)
    assert load.admit().admitted


def test_warm_up_figures_stand_in_until_live_requests_teach_better():
    clock = Clock()
    load = TierLoad(slots=2, ttft_target_s=5.0, clock=clock, alpha=1.0)
    load.seed(ttft_s=0.5, tpot_s=0.1)
    load.started(10), load.started(10)
    assert load.estimate_wait_s() == pytest.approx(0.5 + 20 * 0.1 / 2)  # a queue can be promised at once
    assert load.admit().admitted
    ticket = load.started(10)
    clock.now = 2.0
    load.first_token(ticket)  # queued: teaches no TTFT
    assert load.ttft.value == 0.5
    load.seed(ttft_s=9.0, tpot_s=9.0)  # a later seed never overrides what is known
    assert (load.ttft.value, load.tpot.value) == (0.5, 0.1)


def test_a_request_without_max_tokens_counts_a_long_budget():
    load = loaded([None])
    assert load.work_tokens() == UNBOUNDED_BUDGET_TOKENS
