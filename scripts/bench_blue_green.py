"""Blue/green under load: switch a tier's serving version with `serve deploy`, then retire the old one.

    .venv/bin/python -m scripts.bench_blue_green [--clients 4] [--max-tokens 32] [--out bench-out/blue-green.json]

Starts a throwaway Ray head on 127.0.0.1 and `serve deploy`s the local profile with a second version
of the strong tier (v2: the pruned model) beside v1, v2 getting shadow copies. `--clients` closed-loop
HTTP clients then ask the `strong` route without pause while:
1. switch: the router's user_config sets `stable: v2` and `serve deploy` applies it in place;
2. retire: v1 is removed from the tier's versions (an args change: Ray Serve replaces every replica of
   the app, new ones first with max_surge_percent, and drains v1's).
Each change is sent as `serve deploy` sends it (PUT /api/serve/applications/ on the dashboard).
For each it reports the requests sent and failed, and the times from that request: first v2 answer,
every later request on v2, last v1 answer ended (in-flight requests drained); for the retirement, v1
deleted and the app RUNNING again.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx

from scripts.harness.cluster import ROOT, RayHead, app_args, app_status, free_port, load_profile, wait_for
from serve_app.config import check_serve_config

MARKER = ("SERVE_APP_BENCH_RUN", str(os.getpid()))
QUESTION = [{"role": "user", "content": "Name a large city in France and say why it is known."}]


def until(what: str, check, timeout_s: float = 900) -> float:
    """When `check` first held (monotonic clock), polled every 0.5 s."""
    wait_for(what, check, timeout_s, every_s=0.5)
    return time.monotonic()


class Load:
    """Closed-loop clients on one route: (sent, answered, status, served version) of every request."""

    def __init__(self, base_url: str, clients: int, max_tokens: int):
        self.results: list[tuple[float, float, int, str | None]] = []
        self._stop = threading.Event()
        self._body = {"model": "strong", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0}
        self._threads = [threading.Thread(target=self._client, args=(base_url,), daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=300) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/chat/completions", json=self._body)
                    self.results.append((sent, time.monotonic(), response.status_code,
                                         response.headers.get("x-served-version")))
                except httpx.HTTPError as exc:
                    self.results.append((sent, time.monotonic(), 0, type(exc).__name__))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def window(self, start: float, end: float) -> list:
        return [r for r in self.results if start <= r[0] < end]


def deploy(config: dict, head: RayHead) -> tuple[float, float]:
    """Check the config as CI would (scripts/rollout.py check), then send it as `serve deploy` does, timed
    from the request to its acceptance."""
    check_serve_config(config)
    sent = time.monotonic()
    return sent, head.deploy(config, cli=False)


def switch_figures(load: Load, sent: float, accepted: float, ended: float) -> dict:
    during = load.window(sent, ended)
    v2_sent = [t for t, _, _, v in during if v == "v2"]
    all_v2_from = min(t for t in v2_sent if all(v == "v2" for u, _, _, v in during if u >= t))
    return {
        "requests_sent": len(during), "failed": sum(status != 200 for _, _, status, _ in during),
        "deploy_request_s": round(accepted - sent, 2),
        "first_v2_answer_s": round(min(a for _, a, _, v in during if v == "v2") - sent, 2),
        "all_new_requests_on_v2_from_s": round(all_v2_from - sent, 2),
        "last_v1_answer_s": round(max(a for _, a, _, v in load.results if v == "v1") - sent, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--settle-s", type=float, default=20, help="load before and after each change")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/blue-green.json")
    args = parser.parse_args()

    os.environ.pop("SERVE_APP_API_KEYS", None)  # a loopback benchmark: no API keys
    http_port = free_port()
    base_url = f"http://127.0.0.1:{http_port}/v1"
    folder = Path(tempfile.mkdtemp(prefix="bg-", dir="/tmp"))
    head = RayHead.start(folder / "ray-start.log", MARKER)
    dashboard_url = head.dashboard_url
    load = None
    try:
        blue = load_profile("local-cpu.yaml")
        blue["http_options"]["port"] = http_port
        app = blue["applications"][0]
        app["args"]["tiers"]["strong"]["versions"] = {"v2": {"model": {"source": "./models/smollm2-135m-instruct-pruned"}}}
        app["deployments"] = [{"name": "router", "user_config": {"rollouts": {"strong": {"shadow": "v2",
                                                                                        "shadow_percent": 100}}}}]
        deploy(blue, head)
        time.sleep(5)  # the controller takes the new target before it reports a status
        until("the app", lambda: app_status(dashboard_url)["status"] == "RUNNING")
        load = Load(base_url, args.clients, args.max_tokens)
        time.sleep(args.settle_s)

        green = copy.deepcopy(blue)
        green["applications"][0]["deployments"][0]["user_config"] = {"rollouts": {"strong": {"stable": "v2"}}}
        sent, accepted = deploy(green, head)
        time.sleep(args.settle_s)
        switch = switch_figures(load, sent, accepted, time.monotonic())
        print("switch:", switch)

        retired = copy.deepcopy(green)
        strong = app_args(retired)["tiers"]["strong"]
        strong.update(model={"source": "./models/smollm2-135m-instruct-pruned"}, version="v2")
        strong.pop("versions")
        sent, accepted = deploy(retired, head)
        v1_gone = until("v1 deleted", lambda: "llm-strong-v1" not in app_status(dashboard_url)["deployments"])
        running = until("the app running", lambda: app_status(dashboard_url)["status"] == "RUNNING")
        time.sleep(args.settle_s)
        ended = time.monotonic()
        during = load.window(sent, ended)
        retire = {"requests_sent": len(during), "failed": sum(status != 200 for _, _, status, _ in during),
                  "versions_served": sorted({v for *_, v in during if v}),
                  "deploy_request_s": round(accepted - sent, 2), "v1_deleted_s": round(v1_gone - sent, 2),
                  "app_running_again_s": round(running - sent, 2)}
        print("retire:", retire)
        load.stop()
        result = {"clients": args.clients, "max_tokens": args.max_tokens, "requests": len(load.results),
                  "failed": sum(status != 200 for _, _, status, _ in load.results), "switch": switch, "retire": retire}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    finally:
        if load is not None:
            load.stop()
        head.stop()


if __name__ == "__main__":
    main()
