"""The router's gauges (deployments.metrics.GaugeBoard): a series' first value goes to Ray at once, later
values only with the board's periodic re-send, so a value set on every request costs no Ray metric call."""

import threading

from deployments.metrics import GaugeBoard
from scripts.harness.cluster import wait_for


class FakeGauge:
    def __init__(self):
        self.sent: list[tuple[float, dict]] = []
        self._lock = threading.Lock()

    def set(self, value, tags):
        with self._lock:
            self.sent.append((value, dict(tags)))

    def values(self):
        with self._lock:
            return [value for value, _ in self.sent]


def test_a_new_series_is_sent_at_once_and_later_values_by_the_refresh():
    gauge = FakeGauge()
    board = GaugeBoard(interval_s=3600)  # no refresh within the test: what `set` itself sends
    board.set(gauge, 1, {"backend": "cheap"})
    assert gauge.values() == [1]
    for value in range(2, 100):
        board.set(gauge, value, {"backend": "cheap"})
    assert gauge.values() == [1]
    board.set(gauge, 7, {"backend": "strong"})  # another series of the same gauge is new
    assert gauge.sent == [(1, {"backend": "cheap"}), (7, {"backend": "strong"})]


def test_the_refresh_sends_each_series_last_value():
    gauge = FakeGauge()
    board = GaugeBoard(interval_s=0.02)
    board.set(gauge, 1, {"backend": "cheap"})
    board.set(gauge, 5, {"backend": "cheap"})
    wait_for("the refresh to send the last value", lambda: gauge.values()[-1:] == [5], timeout_s=30, every_s=0.01)
