"""The cost report's arithmetic over two fixed scrapes."""

import pytest

from scripts.harness.metrics import report, total
from serve_app.config import AppConfig


def samples(requests_served, escalated, shed, tokens, cheap_usd, api_usd):
    r = "ray_serve_app_requests_total"
    return {
        (r, (("outcome", "served"), ("replica", "a"))): requests_served,
        (r, (("outcome", "escalated"), ("replica", "a"))): escalated,
        (r, (("outcome", "shed"), ("replica", "a"))): shed,
        ("ray_serve_app_output_tokens_total", (("backend", "cheap"),)): tokens,
        ("ray_serve_app_cost_usd_total", (("backend", "cheap"),)): cheap_usd,
        ("ray_serve_app_cost_usd_total", (("backend", "api"),)): api_usd,
    }


def test_total_sums_the_samples_whose_labels_match():
    s = samples(1, 2, 3, 0, 0.5, 0.25)
    assert total(s, "ray_serve_app_requests_total") == 6
    assert total(s, "ray_serve_app_requests_total", outcome="shed") == 3
    assert total(s, "ray_serve_app_cost_usd_total", backend="api") == 0.25


def test_report_over_a_window():
    config = AppConfig.model_validate({
        "tiers": {"cheap": {"model": {"source": "/m"}, "price": {"usd_per_replica_hour": 1.8},
                            "deployment": {"num_replicas": 2}},
                  "strong": {"model": {"source": "/m"}, "price": {"usd_per_replica_hour": 0.0}}},
        "external": {"api": {"base_url": "http://x/v1", "model": "m"}},
    })
    before, after = samples(10, 0, 0, 1000, 0.1, 0.0), samples(40, 10, 50, 37_000, 0.28, 0.02)
    result = report(before, after, 60.0, config)
    assert result["requests"] == {"escalated": 10, "served": 30, "shed": 50}
    assert result["succeeded"] == 40 and result["output_tokens_per_s"] == 600
    assert result["attributed_cost_usd"] == pytest.approx(0.2)
    assert result["attributed_cost_per_successful_request_usd"] == pytest.approx(0.005)
    assert result["fleet_usd_per_hour"] == pytest.approx(3.6)
    assert result["fleet_cost_usd"] == pytest.approx(3.6 / 60 + 0.02)  # a minute of two replicas, plus API spend
    assert result["output_tokens_per_s_per_fleet_usd_per_hour"] == pytest.approx(600 / (0.08 * 60), rel=1e-3)
