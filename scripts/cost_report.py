"""Cost report from the live metrics: cost per successful request and tokens per second per dollar.

    .venv/bin/python -m scripts.cost_report --metrics-url http://127.0.0.1:8080/metrics --window-s 60 \
        [--config configs/local-cpu.yaml]

Scrapes Ray's Prometheus endpoint (`ray start --metrics-export-port 8080`) at the start and end of
the window and reports over the difference. Two views of cost:
- attributed: what the requests' attempts cost (`serve_app_cost_usd`: replica-seconds held under
  processor sharing for self-hosted tiers, token prices for APIs); idle capacity is in no request;
- fleet: what the configured replicas cost over the window (replicas x usd_per_replica_hour),
  idle time included, plus API spend. This is the bill, and the basis of tokens per second per dollar.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scripts.harness.metrics import report, scrape
from serve_app.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8080/metrics")
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml",
                        help="the deployed Serve config, for the fleet's replica prices")
    args = parser.parse_args()
    config = AppConfig.from_serve_file(args.config)
    before, start = scrape(args.metrics_url), time.monotonic()
    time.sleep(args.window_s)
    after = scrape(args.metrics_url)
    print(json.dumps(report(before, after, time.monotonic() - start, config), indent=2))


if __name__ == "__main__":
    main()
