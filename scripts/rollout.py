"""Rollouts from the command line: check a Serve config before `serve deploy`, and read what the
router is doing.

    .venv/bin/python -m scripts.rollout check configs/local-cpu.yaml
    .venv/bin/python -m scripts.rollout status --url http://127.0.0.1:8000

`check` validates each application's args (AppConfig) and its router's rollout (the `user_config`
`serve deploy` applies in place; a router refuses an invalid one at run time and keeps the current
split, so CI should run this first), then prints each tier's versions and traffic. `status` prints
`GET /v1/rollouts`: the split in force, the canary guard's figures, rollbacks and shadow results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
import yaml

from serve_app.config import check_serve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="validate a Serve config's apps and rollouts")
    check_parser.add_argument("config", type=Path)
    status_parser = commands.add_parser("status", help="GET /v1/rollouts of a running app")
    status_parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's root (with its route prefix)")
    status_parser.add_argument("--api-key", default=os.environ.get("SERVE_APP_API_KEY"))
    args = parser.parse_args()
    if args.command == "check":
        try:
            found = check_serve_config(yaml.safe_load(args.config.read_text()))
        except ValueError as exc:
            sys.exit(f"{args.config}: {exc}")
        for app, tiers in found.items():
            for tier, traffic in tiers.items():
                extras = "".join(f", {role} {value}" for role, value in traffic.items() if role in ("canary", "shadow") and value)
                print(f"{app}/{tier}: versions {', '.join(traffic['versions'])}; stable {traffic['stable']}{extras}")
        return
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    response = httpx.get(f"{args.url.rstrip('/')}/v1/rollouts", headers=headers, timeout=10)
    response.raise_for_status()
    print(json.dumps(response.json(), indent=1))


if __name__ == "__main__":
    main()
