"""The shipped Grafana dashboard is what its script writes, and reads only metrics that exist."""

import json
import re

from deployments.metrics import ENGINE_METRICS, ROUTER_METRICS
from scripts.grafana_dashboard import OUT, render


def test_committed_dashboard_is_up_to_date():
    assert OUT.read_text() == render(), "run: .venv/bin/python scripts/grafana_dashboard.py"


def test_every_panel_reads_a_defined_metric():
    defined = set(ROUTER_METRICS) | set(ENGINE_METRICS)
    exprs = [t["expr"] for panel in json.loads(OUT.read_text())["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for e in exprs for name in re.findall(r"ray_(serve_app_\w+)", e)}
    assert used and used <= defined, used - defined
    assert defined - {"serve_app_engine_peak_memory_bandwidth_bytes", "serve_app_replica_seconds"} <= used, "metrics without a panel"
