"""API versus self-hosting: what a traffic profile costs each way, and where the two cross.

Pure arithmetic, no I/O. An API bills tokens, so its cost grows linearly with volume. A self-hosted
tier bills replica-hours, so its cost is a staircase: each replica carries a fixed number of requests
per day at the peak hour, and the fleet is sized for the peak, never below `min_replicas`. The two
lines can cross more than once (just past a step the API may be cheaper again), so there are two
figures: the volume where self-hosting is first cheaper, and the one from which it stays cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOURS_PER_MONTH = 730.0
"""365 * 24 / 12."""
DAYS_PER_MONTH = HOURS_PER_MONTH / 24


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_day: float
    input_tokens: float
    """Mean prompt tokens per request."""
    output_tokens: float
    """Mean completion tokens per request."""
    peak_factor: float = 1.0
    """Peak-hour request rate over the day's mean rate; capacity is sized for the peak."""


@dataclass(frozen=True, slots=True)
class ApiPrice:
    input_per_mtok: float
    """USD per million prompt tokens."""
    output_per_mtok: float
    """USD per million completion tokens."""

    def per_request(self, traffic: Traffic) -> float:
        return (traffic.input_tokens * self.input_per_mtok + traffic.output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class SelfHosted:
    hourly_usd_per_replica: float
    """Accelerator (or CPU) price per hour times the accelerators of one replica."""
    output_tokens_per_s: float
    """Output-token throughput of one replica at its TTFT/TPOT targets (measured)."""
    utilization: float = 0.7
    """Share of that throughput planned for at the peak (headroom for bursts and rollouts)."""
    min_replicas: int = 1

    @property
    def monthly_usd_per_replica(self) -> float:
        return self.hourly_usd_per_replica * HOURS_PER_MONTH

    def requests_per_day_per_replica(self, traffic: Traffic) -> float:
        """Daily volume one replica carries when the peak hour runs at `utilization` of its throughput."""
        peak_rps = self.output_tokens_per_s * self.utilization / traffic.output_tokens
        return peak_rps * 86400 / traffic.peak_factor

    def replicas(self, traffic: Traffic) -> int:
        needed = math.ceil(traffic.requests_per_day / self.requests_per_day_per_replica(traffic) - 1e-9)
        return max(self.min_replicas, needed)


def monthly_api_cost(traffic: Traffic, price: ApiPrice) -> float:
    return traffic.requests_per_day * DAYS_PER_MONTH * price.per_request(traffic)


def monthly_self_hosted_cost(traffic: Traffic, hosting: SelfHosted) -> float:
    return hosting.replicas(traffic) * hosting.monthly_usd_per_replica


def _regions(traffic: Traffic, price: ApiPrice, hosting: SelfHosted) -> tuple[float, float, float]:
    """Per-replica daily capacity, the volume at which the API costs what n replicas do (per n), and
    k: what a full replica's volume would cost on the API over what the replica costs (> 1: it pays)."""
    capacity = hosting.requests_per_day_per_replica(traffic)
    api_per_day = DAYS_PER_MONTH * price.per_request(traffic)  # monthly API cost per request/day
    replica = hosting.monthly_usd_per_replica
    return capacity, replica / api_per_day, capacity * api_per_day / replica


def first_cheaper_requests_per_day(traffic: Traffic, price: ApiPrice, hosting: SelfHosted) -> float | None:
    """The smallest daily volume at which self-hosting costs no more than the API: where the API's
    cost reaches that of the minimum fleet. None if never."""
    _, crossing, k = _regions(traffic, price, hosting)
    if k < 1:
        return None  # even full replicas cost more per request than the API
    return hosting.min_replicas * crossing  # within the first region, since crossing <= capacity


def break_even_requests_per_day(traffic: Traffic, price: ApiPrice, hosting: SelfHosted) -> float | None:
    """The daily volume from which self-hosting stays no dearer than the API at every higher volume.
    Each added replica costs a step; right after a step the API may be cheaper again, until volumes
    are large enough that the API's cost of one replica's worth of traffic exceeds the step:
    region m (volumes in (capacity * (m-1), capacity * m]) is won whole once m <= (m-1) * k, i.e.
    m >= k / (k-1). None when k <= 1 (never)."""
    capacity, crossing, k = _regions(traffic, price, hosting)
    if k <= 1:
        return None
    whole_from = math.ceil(k / (k - 1) - 1e-12)  # first region won whole
    n = max(hosting.min_replicas, whole_from - 1)
    low = 0.0 if n == hosting.min_replicas else capacity * (n - 1)
    return max(low, n * crossing)


def output_tokens_per_usd(output_tokens_per_s: float, hourly_usd: float) -> float:
    """Output tokens a dollar buys from a fully used replica (tokens per second per dollar-per-second)."""
    return output_tokens_per_s * 3600 / hourly_usd
