"""The API-versus-self-hosting arithmetic against hand-computed cases."""


import pytest

from serve_app.analysis.cost import (
    ApiPrice,
    SelfHosted,
    Traffic,
    break_even_requests_per_day,
    first_cheaper_requests_per_day,
    monthly_api_cost,
    monthly_self_hosted_cost,
    output_tokens_per_usd,
)

TRAFFIC = Traffic(requests_per_day=100_000, input_tokens=500, output_tokens=200, peak_factor=2.0)
PRICE = ApiPrice(input_per_mtok=0.15, output_per_mtok=0.60)  # 195 USD per million requests of this shape


def test_api_cost_is_tokens_times_prices():
    assert PRICE.per_request(TRAFFIC) == pytest.approx((500 * 0.15 + 200 * 0.60) / 1e6)
    assert monthly_api_cost(TRAFFIC, PRICE) == pytest.approx(100_000 * 730 / 24 * 1.95e-4)  # 593.125


def test_a_replica_is_sized_for_the_peak_hour():
    hosting = SelfHosted(hourly_usd_per_replica=2.0, output_tokens_per_s=1000, utilization=0.5)
    # 1000 tok/s * 0.5 / 200 tok = 2.5 req/s at the peak, which is twice the mean: 108,000 req/day.
    assert hosting.requests_per_day_per_replica(TRAFFIC) == pytest.approx(108_000)
    assert hosting.replicas(TRAFFIC) == 1
    assert hosting.replicas(Traffic(108_001, 500, 200, 2.0)) == 2
    assert hosting.replicas(Traffic(216_000, 500, 200, 2.0)) == 2
    assert monthly_self_hosted_cost(TRAFFIC, hosting) == pytest.approx(2.0 * 730)


def test_min_replicas_is_a_floor():
    assert SelfHosted(2.0, 1000, 0.5, min_replicas=3).replicas(Traffic(10, 500, 200)) == 3


def test_break_even_where_one_replica_costs_what_the_api_does():
    hosting = SelfHosted(2.0, 5000, 0.5)  # 540,000 req/day per replica
    # 1460 USD/month = volume * 30.42 days * 1.95e-4 USD  =>  246,154 req/day, within one replica.
    assert break_even_requests_per_day(TRAFFIC, PRICE, hosting) == pytest.approx(1460 / (730 / 24 * 1.95e-4))


def test_break_even_counts_the_replica_floor():
    hosting = SelfHosted(2.0, 5000, 0.5, min_replicas=2)
    assert break_even_requests_per_day(TRAFFIC, PRICE, hosting) == pytest.approx(2 * 1460 / (730 / 24 * 1.95e-4))


def test_past_a_step_the_api_can_be_cheaper_again_so_break_even_is_where_it_stays_so():
    traffic = Traffic(1_000_000, 600, 250, peak_factor=2.5)
    price = ApiPrice(0.20, 0.60)  # 2.7e-4 USD per request: 0.0082125 USD per month per request/day
    hosting = SelfHosted(2.5, 3000, 0.7)  # 8.4 req/s at the peak: 290,304 req/day per replica, 1825 USD/month
    assert first_cheaper_requests_per_day(traffic, price, hosting) == pytest.approx(1825 / 0.0082125)  # 222,222
    # Just past one replica (290,304) two cost 3650 > 2384 on the API. k = 290,304 * 0.0082125 / 1825
    # = 1.306, so regions are won whole from m >= k / (k - 1) = 4.26, i.e. 5: the break-even is inside
    # region 4, where 4 replicas (7300 USD) meet the API at 888,889 req/day.
    assert break_even_requests_per_day(traffic, price, hosting) == pytest.approx(4 * 1825 / 0.0082125)
    just_past = Traffic(300_000, 600, 250, 2.5)
    assert monthly_self_hosted_cost(just_past, hosting) > monthly_api_cost(just_past, price)
    for volume in (888_889, 1_000_000, 1_161_217, 2_000_000, 5_000_000):
        at = Traffic(volume, 600, 250, 2.5)
        assert monthly_self_hosted_cost(at, hosting) <= monthly_api_cost(at, price), volume


def test_no_break_even_when_a_full_replica_costs_more_per_request_than_the_api():
    hosting = SelfHosted(2.0, 1000, 0.5)  # 1460 / (108,000 * 30.42) = 4.4e-4 USD per request > 1.95e-4
    assert break_even_requests_per_day(TRAFFIC, PRICE, hosting) is None
    assert first_cheaper_requests_per_day(TRAFFIC, PRICE, hosting) is None


def test_output_tokens_per_usd():
    assert output_tokens_per_usd(1000, 2.0) == pytest.approx(1_800_000)


@pytest.mark.parametrize(("tokens_per_s", "hourly", "min_replicas"), [(3000, 2.5, 1), (5000, 2.0, 2), (1200, 1.1, 1)])
def test_break_evens_agree_with_a_scan_of_volumes(tokens_per_s, hourly, min_replicas):
    price, hosting = ApiPrice(0.20, 0.60), SelfHosted(hourly, tokens_per_s, 0.7, min_replicas)
    capacity = hosting.requests_per_day_per_replica(Traffic(1, 600, 250, 2.5))
    volumes = [capacity * i / 500 for i in range(1, 500 * 30)]
    cheaper = [monthly_self_hosted_cost(t, hosting) <= monthly_api_cost(t, price)
               for t in (Traffic(v, 600, 250, 2.5) for v in volumes)]
    first = first_cheaper_requests_per_day(Traffic(1, 600, 250, 2.5), price, hosting)
    stays = break_even_requests_per_day(Traffic(1, 600, 250, 2.5), price, hosting)
    step = capacity / 500
    assert first == pytest.approx(volumes[cheaper.index(True)], abs=step)
    last_dearer = max(i for i, c in enumerate(cheaper) if not c)
    assert stays == pytest.approx(volumes[last_dearer + 1], abs=step)
