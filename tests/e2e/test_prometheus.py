"""A real Prometheus against the real stack: it has scraped Ray's metrics endpoint since the stack
started; every query of the committed Grafana dashboard parses and returns data, and the shipped
alert rules load and evaluate. It runs after the rollout tests (stage 3), whose shadow and rollback
series the dashboard's rollout panels show (range queries reach back to them); run alone, those panels
are checked only if Prometheus has seen their series."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse

import httpx
import pytest

from scripts.harness.cluster import ROOT, get_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.stage(3)]  # reads the series every earlier test left

DASHBOARD = ROOT / "docs" / "grafana" / "serve_app.json"
ROLLOUT_ONLY = ("ray_serve_app_rollout_rollbacks_total", "ray_serve_app_shadow_")
"""Series that exist only once a rollout has run a shadow or rolled a canary back."""


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def query(prometheus_url: str, expr: str) -> list:
    """The instant query's result; a query Prometheus cannot parse fails here, at once."""
    try:
        body = get_json(f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    except urllib.error.HTTPError as exc:
        pytest.fail(f"Prometheus refused {expr!r}: {exc.read().decode()[:500]}")
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def prometheus_url(stack) -> str:
    if stack.prometheus_url is None:
        pytest.skip("prometheus not installed: scripts/setup.sh installs Debian's package when run as root")
    return stack.prometheus_url


def test_prometheus_scrapes_ray_and_every_dashboard_query_returns_data(stack, prometheus_url):
    (target,) = get_json(f"{prometheus_url}/api/v1/targets")["data"]["activeTargets"]
    assert target["health"] == "up", target
    # Fresh traffic on every route, so that the rate panels have something in their window.
    for model in ("cheap", "strong", "auto"):
        response = httpx.post(f"{stack.base_url}/chat/completions", headers=stack.headers, timeout=300, json={
            "model": model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8})
        assert response.status_code == 200, response.text
    queries = dashboard_queries()
    assert len(queries) >= 20
    for _, expr in queries:
        query(prometheus_url, expr)  # every one parses, before waiting for data
    seen = set(get_json(f"{prometheus_url}/api/v1/label/__name__/values")["data"])
    queries = [(title, expr) for title, expr in queries if not any(name in expr for name in ROLLOUT_ONLY)
               or set(re.findall(r"ray_[a-z0-9_]+", expr)) <= seen]
    assert len(queries) >= 25

    empty: list[str] = []

    def all_have_data():
        empty[:] = [f"{title}: {expr}" for title, expr in queries if not query(prometheus_url, expr)]
        return not empty

    try:
        wait_for("data for every dashboard query", all_have_data, timeout_s=180, every_s=5)
    except TimeoutError:
        pytest.fail("dashboard queries without data:\n" + "\n".join(empty))


def test_the_shipped_alert_rules_load_and_evaluate(prometheus_url):
    def rules():
        (group,) = get_json(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
        evaluated = all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in group["rules"])
        return group if evaluated else None

    group = wait_for("every rule evaluated", rules, timeout_s=120, every_s=2)
    assert group["file"].endswith("configs/prometheus/alerts.yml")
    assert {r["name"] for r in group["rules"]} == {"ServeAppHighErrorRate", "ServeAppHighShedRate",
                                                    "ServeAppTTFTP99OverTarget", "ServeAppCircuitOpen",
                                                    "ServeAppReplicaStartFailures"}
    assert all(r["health"] == "ok" and r.get("lastError", "") == "" for r in group["rules"]), group["rules"]
