"""Load-shedding decisions from in-flight work, observed speed and the adaptive limit."""

import pytest

from serve_app.routing.admission import AIMD_BACKOFF, UNBOUNDED_BUDGET_TOKENS, TierLoad


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def loaded(budgets, ttft_s=1.0, tpot_s=0.1, batch=4, target_s=5.0, ceiling=64):
    """A tier with requests of the given max_tokens in flight, none of which has produced a token."""
    load = TierLoad(batch=batch, ttft_target_s=target_s, clock=Clock(), ceiling=ceiling)
    load.ttft.add(ttft_s)
    load.tpot.add(tpot_s)
    for budget in budgets:
        load.started(budget)
    return load


def test_idle_tier_admits_even_with_no_history():
    load = TierLoad(batch=4, ttft_target_s=1.0, clock=Clock())
    assert load.admit().admitted


def test_within_the_batch_the_wait_is_the_observed_ttft():
    load = loaded([100] * 3)
    assert load.estimate_wait_s() == pytest.approx(1.0)
    assert load.admit().admitted


def test_past_the_batch_a_newcomer_waits_for_as_many_answers_to_end_as_are_queued_ahead():
    # A batch of 4 answers of 40 tokens, and 4 queued: each queued one takes a slot when an answer
    # ends (after 40 tokens), and the newcomer the first slot that frees after them (after 80).
    load = loaded([40] * 8)
    assert load.estimate_wait_s() == pytest.approx(1.0 + 80 * 0.1)
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == pytest.approx(4.0)
    # One queued request only: it takes the first slot to free, the newcomer the next (at 40 tokens).
    assert loaded([40] * 5).estimate_wait_s() == pytest.approx(1.0 + 40 * 0.1)
    assert loaded([40] * 5).admit().admitted


def test_the_batch_frees_slot_by_slot_as_the_shortest_answers_end():
    load = loaded([100, 10, 100, 100, 100])  # the 10-token answer frees a slot for the one queued
    assert load.estimate_wait_s() == pytest.approx(1.0 + 100 * 0.1)
    assert loaded([100, 10, 100, 20, 100]).estimate_wait_s() == pytest.approx(1.0 + 20 * 0.1)


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
    load = loaded([30] * 5)  # wait 1 + 30 * 0.1 = 4 s against a 5 s target
    assert not load.admit("low").admitted
    assert load.admit("normal").admitted
    assert loaded([30] * 8).admit("high").admitted  # wait 7 s, high may wait up to 10 s


def test_speed_and_length_are_learned_from_reported_requests():
    clock = Clock()
    load = TierLoad(batch=2, ttft_target_s=5.0, clock=clock, alpha=1.0)
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
    load = TierLoad(batch=1, ttft_target_s=5.0, clock=clock, alpha=1.0)
    first = load.started(10)
    queued = load.started(10)
    clock.now = 0.2
    load.first_token(first)
    clock.now = 3.0
    load.first_token(queued)
    assert load.ttft.value == pytest.approx(0.2)


def test_failed_requests_teach_nothing():
    load = TierLoad(batch=2, ttft_target_s=5.0, clock=Clock())
    load.finished(load.started(10), completed=False)
    assert load.tpot.value is None and load.length_share.value == 1.0 and load.in_flight == 0
    assert load.limit == 2


def test_speed_unknown_is_slow_start_one_per_replica_then_the_batch():
    clock = Clock()
    load = TierLoad(batch=8, ttft_target_s=5.0, clock=clock, cold_slots=2)  # two replicas, nothing known
    first, _ = load.started(10), load.started(10)
    decision = load.admit()
    assert not decision.admitted and decision.retry_after_s == 5.0  # a sudden burst: refused at once
    clock.now = 0.3
    load.first_token(first)  # the first token: its TTFT is known, the batch opens
    assert load.admit().admitted
    for _ in range(6):
        load.started(10)
    assert not load.admit().admitted  # queueing needs a finished request's TPOT first
    load.finished(first, completed=True)
    assert load.admit().admitted


def test_warm_up_figures_stand_in_until_live_requests_teach_better():
    clock = Clock()
    load = TierLoad(batch=2, ttft_target_s=5.0, clock=clock, alpha=1.0, ceiling=8)
    load.seed(ttft_s=0.5, tpot_s=0.1)
    load.started(10), load.started(10)
    assert load.estimate_wait_s() == pytest.approx(0.5 + 10 * 0.1)  # a queue can be promised at once
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


def test_the_adaptive_limit_starts_at_the_ceiling_and_a_broken_promise_cuts_it():
    clock = Clock()
    load = TierLoad(batch=4, ttft_target_s=5.0, clock=clock, ceiling=20)
    load.seed(ttft_s=0.5, tpot_s=0.01)
    assert load.limit == 20
    batch = [load.started(10) for _ in range(4)]
    clock.now = 0.5
    for ticket in batch:  # the batch: in time
        load.first_token(ticket)
    assert load.limit == 20
    for _ in range(6):  # queued, each admitted after the last cut: the estimate promised 5 s, it took 6
        late = load.started(10)
        clock.now += 6.0
        load.first_token(late)
    assert load.limit == pytest.approx(20 * AIMD_BACKOFF ** 6)  # 10.6: no more than the 10 in flight
    decision = load.admit()  # the estimate alone would admit (tiny TPOT): the limit refuses
    assert load.estimate_wait_s() < 5.0 and not decision.admitted and decision.retry_after_s == 1.0


def test_a_burst_late_all_together_cuts_the_limit_once():
    clock = Clock()
    load = TierLoad(batch=32, ttft_target_s=10.0, clock=clock, ceiling=96)
    load.seed(ttft_s=1.0, tpot_s=0.1)
    burst = [load.started(64) for _ in range(32)]
    clock.now = 12.0
    for ticket in burst:
        load.first_token(ticket)
    assert load.limit == pytest.approx(96 * AIMD_BACKOFF)  # one congestion, one cut (was 96 * 0.9**32: 3)
    later = load.started(64)
    clock.now = 24.0
    load.first_token(later)  # admitted after the cut, and late too: the congestion goes on
    assert load.limit == pytest.approx(96 * AIMD_BACKOFF ** 2)


def test_kept_promises_raise_the_limit_while_it_is_used_up_to_the_ceiling():
    clock = Clock()
    load = TierLoad(batch=4, ttft_target_s=5.0, clock=clock, ceiling=12)
    load.limit = 6.0
    idle = load.started(10)
    load.first_token(idle)  # 1 in flight, limit 6: not used, not raised
    assert load.limit == 6.0
    busy = [load.started(10) for _ in range(4)]
    for ticket in busy:
        load.first_token(ticket)
    assert load.limit == 10.0
    for _ in range(5):
        load.first_token(load.started(10))
    assert load.limit == 12.0  # never past the ceiling


def test_a_request_that_gave_up_waiting_past_the_target_is_a_broken_promise():
    clock = Clock()
    load = TierLoad(batch=4, ttft_target_s=5.0, clock=clock, ceiling=10)
    early, late = load.started(10), load.started(10)
    clock.now = 1.0
    load.finished(early, completed=False)  # the caller left early: no promise was broken
    assert load.limit == 10
    clock.now = 7.0
    load.finished(late, completed=False)
    assert load.limit == pytest.approx(10 * AIMD_BACKOFF)


def test_a_reserved_answer_holds_its_place_and_teaches_no_per_request_speed():
    clock = Clock()
    load = TierLoad(batch=4, ttft_target_s=5.0, clock=clock, alpha=1.0)
    ticket = load.started(100, reserved=True)
    assert load.holds(ticket) and load.in_flight == 1
    clock.now = 0.4
    load.first_token(ticket)
    ticket.produced = 50
    clock.now = 30.0  # a multi-pass answer's pace is not the engine's
    load.finished(ticket, completed=True)
    assert load.ttft.value == pytest.approx(0.4)
    assert load.tpot.value is None and load.length_share.value == 1.0 and not load.holds(ticket)
    load.finished(ticket, completed=True)  # ending twice is harmless
    assert load.in_flight == 0


def test_resizing_keeps_the_limits_share_of_the_ceiling():
    load = TierLoad(batch=8, ttft_target_s=5.0, clock=Clock(), ceiling=24)
    load.limit = 12.0
    load.resize(batch=16, cold_slots=2, ceiling=48)
    assert (load.batch, load.ceiling, load.limit) == (16, 48, 24.0)


def test_a_newcomer_beside_few_expects_what_requests_beside_few_took_not_a_bursts_ttft():
    """A burst's requests prefill beside the whole batch and take long; a request beside one other does not.
    One average over both refused newcomers at a quarter of the batch after a burst (issue: `auto` refused
    at 8 streams, batch 32)."""
    clock = Clock()
    load = TierLoad(batch=32, ttft_target_s=10.0, clock=clock, ceiling=96)
    burst = [load.started(64) for _ in range(32)]
    clock.now = 12.0  # past the target: each prefilled beside 31 others
    for ticket in burst:
        load.first_token(ticket)
    for ticket in burst:
        load.finished(ticket, completed=False)
    assert load.ttft.value > 10.0  # the average alone now refuses a newcomer beside anyone
    lone = load.started(64)
    clock.now += 0.2
    load.first_token(lone)  # an idle tier's request: fast
    assert load.ttft_beside(1) == pytest.approx(0.2) and load.admit().admitted
    assert load.ttft_beside(31) > 10.0  # a newcomer beside a full batch still expects the burst's
    others = [load.started(64) for _ in range(27)]
    assert load.in_flight == 28 and not load.admit().admitted
    for ticket in others:
        load.finished(ticket, completed=True)


def test_a_share_of_the_batch_with_no_figure_takes_the_highest_below_it():
    clock = Clock()
    load = TierLoad(batch=8, ttft_target_s=10.0, clock=clock)
    load.seed(ttft_s=3.0, tpot_s=0.1)
    assert load.ttft_beside(0) == load.ttft_beside(7) == 3.0  # only the warm-up's figure: for every share
    first = load.started(10)
    clock.now = 0.4
    load.first_token(first)
    second = load.started(10)
    third = load.started(10)
    clock.now = 1.4
    load.first_token(second)
    load.first_token(third)  # beside 2: the second quarter of the batch
    assert load.ttft_beside(0) == pytest.approx(0.4)
    assert load.ttft_beside(2) == pytest.approx(1.0)
    assert load.ttft_beside(7) == pytest.approx(1.0)  # no figure there yet: the highest below
