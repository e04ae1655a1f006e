"""Blue/green under load: switch a tier's serving version with `serve deploy`, then retire the old one.

    .venv/bin/python scripts/bench_blue_green.py [--clients 4] [--max-tokens 32] [--out bench-out/blue-green.json]

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
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import yaml
from process_tree import stop_process_tree

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
MARKER = ("SERVE_APP_BENCH_RUN", str(os.getpid()))
QUESTION = [{"role": "user", "content": "Name a large city in France and say why it is known."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_status(dashboard_url: str) -> dict:
    with urllib.request.urlopen(f"{dashboard_url}/api/serve/applications/", timeout=10) as response:
        return json.loads(response.read())["applications"].get("llm", {})


def until(what: str, check, timeout_s: float = 900, every_s: float = 0.5) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return time.monotonic()
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(every_s)


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


def deploy(config: dict, dashboard_url: str, folder: Path) -> tuple[float, float]:
    """Check the config, then send it as `serve deploy` does (PUT /api/serve/applications/), timed
    from the request to its acceptance: on two busy cores the CLI itself takes minutes to start."""
    path = folder / f"deploy-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([BIN / "python", "scripts/rollout.py", "check", str(path)], cwd=ROOT, check=True)
    sent = time.monotonic()
    httpx.put(f"{dashboard_url}/api/serve/applications/", json=config, timeout=300).raise_for_status()
    return sent, time.monotonic()


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

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", MARKER[0]: MARKER[1]}
    env.pop("SERVE_APP_API_KEYS", None)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    folder = Path(tempfile.mkdtemp(prefix="bg-", dir="/tmp"))
    dashboard_port, http_port = free_port(), free_port()
    dashboard_url, base_url = f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{http_port}/v1"
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--disable-usage-stats", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4",
         f"--temp-dir={folder}/ray"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    load = None
    try:
        until("the Ray dashboard", lambda: urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=5), 180)
        blue = yaml.safe_load((ROOT / "configs/local-cpu.yaml").read_text())
        blue["http_options"]["port"] = http_port
        app = blue["applications"][0]
        app["args"]["tiers"]["strong"]["versions"] = {"v2": {"model_source": "./models/smollm2-135m-instruct-pruned"}}
        app["deployments"] = [{"name": "router", "user_config": {"rollouts": {"strong": {"shadow": "v2",
                                                                                        "shadow_percent": 100}}}}]
        deploy(blue, dashboard_url, folder)
        time.sleep(5)  # the controller takes the new target before it reports a status
        until("the app", lambda: app_status(dashboard_url)["status"] == "RUNNING")
        load = Load(base_url, args.clients, args.max_tokens)
        time.sleep(args.settle_s)

        green = copy.deepcopy(blue)
        green["applications"][0]["deployments"][0]["user_config"] = {"rollouts": {"strong": {"stable": "v2"}}}
        sent, accepted = deploy(green, dashboard_url, folder)
        time.sleep(args.settle_s)
        switch = switch_figures(load, sent, accepted, time.monotonic())
        print("switch:", switch)

        retired = copy.deepcopy(green)
        strong = retired["applications"][0]["args"]["tiers"]["strong"]
        strong.update(model_source="./models/smollm2-135m-instruct-pruned", version="v2")
        strong.pop("versions")
        sent, accepted = deploy(retired, dashboard_url, folder)
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
        subprocess.run([BIN / "serve", "shutdown", "-a", dashboard_url, "-y"], env=env, capture_output=True, timeout=120)
        stop_process_tree(head, marker=MARKER)


if __name__ == "__main__":
    main()
