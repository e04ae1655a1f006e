"""Scale-up time: from sustained load arriving to a new cheap-tier replica serving.

    .venv/bin/python -m scripts.bench_scale_up [--streams 6] [--out bench-out/scale-up.json]

Deploys the local profile on a fresh local Ray cluster with autoscaling on the cheap tier (min 1,
max 2, the values below), warms it, then starts `--streams` closed-loop HTTP clients on the cheap
route and records, from the moment load starts: when Serve decides to add a replica (a second
replica exists, STARTING), when it is RUNNING, and when it has served its first request (Ray Serve's
per-replica request counter on the metrics endpoint), plus the new replica's own start phases.
Then it stops the load and records when the tier is back at one replica.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import httpx
import yaml

from scripts.harness.cluster import app_args, free_port
from scripts.harness.metrics import scrape, served_by_replica

ROOT = Path(__file__).resolve().parents[1]
AUTOSCALING = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 3, "downscale_delay_s": 30, "look_back_period_s": 6, "metrics_interval_s": 2}


def replica_states(app: str, deployment: str) -> dict[str, int]:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return {getattr(state, "value", str(state)): n for state, n in states.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/scale-up.json")
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_metrics_report_interval_ms"] = "1000"
    config = yaml.safe_load(args.config.read_text())
    profile_args = app_args(config)
    profile_args["tiers"]["cheap"]["deployment"].update(num_replicas=None, autoscaling_config=AUTOSCALING)
    http_port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(profile_args), name="llm", route_prefix="/")
        body = {"model": "cheap", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": args.max_tokens, "ignore_eos": True}
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}/v1", timeout=300)
        http.post("/chat/completions", json=body).raise_for_status()  # warm, and mark the first replica
        deadline = time.monotonic() + 60
        while not (before := set(served_by_replica(scrape(metrics_url), "llm-cheap-v1"))):
            if time.monotonic() > deadline:
                raise RuntimeError("Ray Serve's request counter never reached the metrics endpoint")
            time.sleep(0.5)
        stop, answered, failed = threading.Event(), [], []

        def load():
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}/v1", timeout=300) as client:
                while not stop.is_set():
                    response = client.post("/chat/completions", json=body)
                    (answered if response.status_code == 200 else failed).append(time.monotonic())

        started = time.monotonic()
        workers = [threading.Thread(target=load, daemon=True) for _ in range(args.streams)]
        for worker in workers:
            worker.start()
        marks: dict[str, float] = {}
        while "serving" not in marks and time.monotonic() - started < 900:
            states = replica_states("llm", "llm-cheap-v1")
            now = time.monotonic() - started
            if sum(states.values()) >= 2:
                marks.setdefault("decided", now)
            if states.get("RUNNING", 0) >= 2:
                marks.setdefault("running", now)
                new = {r: n for r, n in served_by_replica(scrape(metrics_url), "llm-cheap-v1").items() if r not in before}
                if any(n > 0 for n in new.values()):
                    marks["serving"] = now
            time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=300)
        stopped = time.monotonic()
        while replica_states("llm", "llm-cheap-v1").get("RUNNING", 0) > 1 and time.monotonic() - stopped < 600:
            time.sleep(1)
        phases = {}
        for (name, tags), value in scrape(metrics_url).items():
            labels = dict(tags)
            if name == "ray_serve_app_engine_start_seconds" and labels.get("tier") == "cheap" and labels["replica"] not in before:
                phases[labels["phase"]] = round(value, 2)
        report = {
            "autoscaling_config": AUTOSCALING, "streams": args.streams, "max_tokens": args.max_tokens,
            "load_to_decision_s": round(marks.get("decided", float("nan")), 1),
            "load_to_running_s": round(marks.get("running", float("nan")), 1),
            "load_to_serving_s": round(marks.get("serving", float("nan")), 1),
            "new_replica_phases_s": phases,
            "answered": len(answered), "failed": len(failed),
            "load_stop_to_scaled_in_s": round(time.monotonic() - stopped, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
