"""Ray's Prometheus endpoint, read as a test or a benchmark reads it: `scrape` a snapshot, `find` or
`total` a metric's samples by labels, and `report` the cost figures over the window between two
snapshots (scripts/cost_report.py prints it)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from serve_app.config import AppConfig

SUCCESS = ("served", "escalated", "fallback", "cached")

Samples = dict[tuple[str, tuple], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def find(samples: Samples, name: str, **labels: str) -> list[float]:
    """A metric's samples whose labels include `labels` (Ray adds replica, deployment, ...)."""
    return [value for (sample, tags), value in samples.items() if sample == name and labels.items() <= dict(tags).items()]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(find(samples, name, **labels))


def served_by_replica(samples: Samples, deployment: str) -> dict[str, float]:
    """Requests each replica of `deployment` has finished, from Ray Serve's own counter."""
    counts: dict[str, float] = {}
    for (name, tags), value in samples.items():
        labels = dict(tags)
        if name == "ray_serve_deployment_request_counter_total" and labels.get("deployment") == deployment:
            counts[labels["replica"]] = counts.get(labels["replica"], 0) + value
    return counts


def report(before: Samples, after: Samples, window_s: float, config: AppConfig | None) -> dict:
    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    outcomes = {tag[1] for (name, tags), _ in after.items() if name == "ray_serve_app_requests_total"
                for tag in tags if tag[0] == "outcome"}
    requests = {o: delta("ray_serve_app_requests_total", outcome=o) for o in sorted(outcomes)}
    succeeded = sum(requests.get(o, 0) for o in SUCCESS)
    output_tokens = delta("ray_serve_app_output_tokens_total")
    attributed = delta("ray_serve_app_cost_usd_total")
    result = {
        "window_s": round(window_s, 1), "requests": requests, "succeeded": succeeded,
        "output_tokens": output_tokens, "output_tokens_per_s": round(output_tokens / window_s, 2),
        "attributed_cost_usd": attributed,
        "attributed_cost_per_successful_request_usd": attributed / succeeded if succeeded else None,
        "output_tokens_per_attributed_usd": round(output_tokens / attributed) if attributed else None,
    }
    if config is not None:
        replica_usd_per_hour = sum(t.price.usd_per_replica_hour * (t.deployment.num_replicas or 1) for t in config.tiers.values())
        api_spend = sum(delta("ray_serve_app_cost_usd_total", backend=name) for name in config.external)
        fleet = replica_usd_per_hour * window_s / 3600 + api_spend
        result |= {
            "fleet_usd_per_hour": replica_usd_per_hour, "fleet_cost_usd": fleet,
            "fleet_cost_per_successful_request_usd": fleet / succeeded if succeeded else None,
            "output_tokens_per_s_per_fleet_usd_per_hour": round(output_tokens / window_s / (fleet * 3600 / window_s), 2)
            if fleet else None,
        }
    return result
