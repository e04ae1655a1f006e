"""Rollouts from the command line: check a Serve config before `serve deploy`, and read what the
router is doing.

    .venv/bin/python scripts/rollout.py check configs/local-cpu.yaml
    .venv/bin/python scripts/rollout.py status --url http://127.0.0.1:8000

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

from serve_app.config import AppConfig, RolloutConfig

BUILDER = "deployments.app:build_app"
ROUTER = "router"


def check(serve_config: dict) -> dict[str, dict[str, dict]]:
    """Per application of this project, per tier: its versions and the traffic the rollout gives them.
    Raises ValueError naming the application and the field at fault."""
    found = {}
    for app in serve_config.get("applications", []):
        if app.get("import_path") != BUILDER:
            continue
        name = app.get("name", "default")
        try:
            config = AppConfig.model_validate(app.get("args") or {})
            router = next((d for d in app.get("deployments", []) if d.get("name") == ROUTER), {})
            rollouts = RolloutConfig.model_validate(router.get("user_config") or {}).check(config)
        except ValueError as exc:
            raise ValueError(f"application {name!r}: {exc}") from None
        found[name] = {}
        for tier, tier_config in config.tiers.items():
            rollout = rollouts.rollouts.get(tier)
            found[name][tier] = {
                "versions": list(tier_config.all_versions()),
                "stable": (rollout and rollout.stable) or tier_config.default_version,
                "canary": rollout and rollout.canary and f"{rollout.canary} {rollout.canary_percent:g} %",
                "shadow": rollout and rollout.shadow and f"{rollout.shadow} {rollout.shadow_percent:g} %",
            }
    return found


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
            found = check(yaml.safe_load(args.config.read_text()))
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
