"""The shipped Prometheus files: the alert rules parse, and each alert fires on the series that should
raise it and stays quiet on a healthy service (promtool's rule unit tests, tests/prometheus/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: scripts/setup.sh installs "
                                    "Debian's prometheus package when run as root")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_the_alert_rules_parse():
    result = promtool("check", "rules", "configs/prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_each_alert_fires_when_it_should_and_only_then():
    result = promtool("test", "rules", "tests/prometheus/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_example_prometheus_config_is_valid():
    result = promtool("check", "config", "--syntax-only", "configs/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
