"""Replica-seconds under processor sharing, and prices, against hand-computed cases."""

import pytest

from serve_app.observability.metering import Price, ProcessorSharing


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_a_request_alone_holds_the_whole_replica():
    clock = Clock()
    meter = ProcessorSharing(clock)
    mark = meter.join()
    clock.now = 3.0
    assert meter.leave(mark) == pytest.approx(3.0)
    assert meter.running == 0


def test_overlapping_requests_split_the_time_they_share():
    clock = Clock()
    meter = ProcessorSharing(clock)
    a = meter.join()            # t=0: a alone until t=2
    clock.now = 2.0
    b = meter.join()            # t=2..6: a and b share (2 s each)
    clock.now = 6.0
    assert meter.leave(a) == pytest.approx(2.0 + 2.0)
    clock.now = 7.0             # t=6..7: b alone
    assert meter.held(b) == pytest.approx(3.0)
    assert meter.leave(b) == pytest.approx(3.0)


def test_shares_add_up_to_the_busy_time():
    clock = Clock()
    meter = ProcessorSharing(clock)
    marks, held = [], []
    for t in range(5):          # five requests joining one second apart, each staying 4 s
        clock.now = float(t)
        marks.append(meter.join())
        for i, m in list(enumerate(marks)):
            if m is not None and t - i == 4:
                held.append(meter.leave(m))
                marks[i] = None
    for t in range(5, 9):
        clock.now = float(t)
        i = t - 4
        held.append(meter.leave(marks[i]))
    assert sum(held) == pytest.approx(8.0)   # busy from t=0 to t=8


def test_idle_time_is_nobodys():
    clock = Clock()
    meter = ProcessorSharing(clock)
    clock.now = 100.0
    mark = meter.join()
    clock.now = 101.0
    assert meter.leave(mark) == pytest.approx(1.0)


def test_prices():
    gpu = Price(usd_per_replica_hour=3.6)
    assert gpu.of(1000, 1000, replica_seconds=10) == pytest.approx(0.01)
    api = Price(usd_per_million_input_tokens=0.2, usd_per_million_output_tokens=0.6)
    assert api.of(600, 250, replica_seconds=99) == pytest.approx(600 * 0.2e-6 + 250 * 0.6e-6)
    assert Price().of(10**6, 10**6, 3600) == 0
