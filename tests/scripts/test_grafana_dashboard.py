"""The shipped Grafana dashboard is what its script writes, and reads only metrics that exist."""

import json
import re
import subprocess
import sys
from pathlib import Path

from deployments.metrics import ENGINE_METRICS, ROUTER_METRICS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "grafana" / "serve_app.json"


def test_committed_dashboard_is_what_the_script_writes(tmp_path):
    out = tmp_path / "dashboard.json"
    subprocess.run([sys.executable, "-m", "scripts.grafana_dashboard", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert COMMITTED.read_text() == out.read_text(), "run: .venv/bin/python -m scripts.grafana_dashboard"


def test_every_panel_reads_a_defined_metric():
    defined = set(ROUTER_METRICS) | set(ENGINE_METRICS)
    exprs = [t["expr"] for panel in json.loads(COMMITTED.read_text())["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for e in exprs for name in re.findall(r"ray_(serve_app_\w+)", e)}
    assert used and used <= defined, used - defined
    assert defined - {"serve_app_engine_peak_memory_bandwidth_bytes", "serve_app_replica_seconds"} <= used, "metrics without a panel"
