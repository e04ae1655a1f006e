"""Do the protections take the service down? The local CPU profile as shipped, on a Ray head of its own,
driven as users drive it (issue: a breaker that never closes again, refusals inside capacity):

1. start: from the deploy on, one request per route every 2 s until /health says ok; what they got, and
   how long after /health said ok every route was served by its own tier;
2. closed loop: `--clients` clients on mixed routes (auto, strong, cheap; max_tokens 8, 32 or 64;
   temperature 0 or 0.7; half streamed) for `--duration-s`: statuses and who served, per route;
3. kill: the strong tier's replica killed (SIGKILL) while `strong` and `auto` requests keep coming: how
   long until `strong` and `auto` are served by the strong tier again with its circuit closed;
   then a burst of `--burst` streams of 128-token answers at once on `strong`, and the same on `auto`:
   how many each admitted, and who served them;
4. storm: `--storm-clients` clients resending at once on every refusal for `--storm-tries` requests each,
   then how long until every route is served by its own tier again.

    .venv/bin/python -m scripts.bench_protections [--out bench-out/protections.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil

from scripts.harness.cluster import get_json, load_profile, serving, wait_for, wait_idle
from scripts.harness.streams import timed_chat

ROUTES = {"cheap": "cheap", "strong": "strong", "auto": "strong"}


def ask(url: str, route: str, timeout_s: float = 120) -> dict:
    try:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=timeout_s, json={
            "model": route, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    except httpx.HTTPError as exc:
        return {"route": route, "status": 0, "error": type(exc).__name__}
    code = None
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "not_an_envelope"
    return {"route": route, "status": response.status_code, "served_by": response.headers.get("x-served-by"),
            "fallback": response.headers.get("x-fallback-reason"), "retry_after": response.headers.get("retry-after"),
            "error": code}


def own_tiers(url: str, routes: dict[str, str] = ROUTES) -> bool:
    return all((r := ask(url, route))["status"] == 200 and r["served_by"] == tier and not r["fallback"]
               for route, tier in routes.items())


def until_own_tiers(url: str, routes: dict[str, str] = ROUTES, timeout_s: float = 900) -> float:
    started = time.monotonic()
    wait_for("every route served by its own tier", lambda: own_tiers(url, routes), timeout_s=timeout_s, every_s=2)
    return round(time.monotonic() - started, 1)


def outcomes(results: list[dict]) -> dict:
    return dict(Counter(f"{r['status']} {r.get('served_by') or r.get('code') or r.get('error') or ''}".strip()
                        for r in results))


async def closed_loop(url: str, clients: int, duration_s: float, seed: int = 7) -> dict:
    rng = random.Random(seed)
    deadline = time.monotonic() + duration_s
    by_route: dict[str, list[dict]] = {route: [] for route in ROUTES}

    async def client_loop(client: httpx.AsyncClient, c: int) -> None:
        turn = 0
        while time.monotonic() < deadline:
            route = rng.choice(list(ROUTES))
            body = {"model": route, "max_tokens": rng.choice([8, 32, 64]), "temperature": rng.choice([0.0, 0.7]),
                    "messages": [{"role": "user", "content": f"Name a city in country number {100 * c + turn}."}]}
            by_route[route].append(await timed_chat(client, f"{url}/v1/chat/completions", body,
                                                    stream=rng.random() < 0.5))
            turn += 1

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(client_loop(client, c) for c in range(clients)))
    return {route: outcomes(results) for route, results in by_route.items()}


async def burst(url: str, route: str, n: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n + 4)) as client:
        results = await asyncio.gather(*(timed_chat(client, f"{url}/v1/chat/completions", {
            "model": route, "max_tokens": 128, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": f"Count from {i} to {i + 60}."}]}) for i in range(n)))
    return outcomes(results)


async def storm(url: str, clients: int, tries: int) -> dict:
    async def hammer(client: httpx.AsyncClient, c: int) -> list[dict]:
        return [await timed_chat(client, f"{url}/v1/chat/completions", {
            "model": "auto", "max_tokens": 128, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": f"Count from {1000 * c + i} on."}]}) for i in range(tries)]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients + 4)) as client:
        results = [r for loop in await asyncio.gather(*(hammer(client, c) for c in range(clients))) for r in loop]
    refusals = [r["latency_s"] for r in results if r["status"] != 200]
    return {"outcomes": outcomes(results), "refusal_latency_s_max": round(max(refusals), 3) if refusals else None}


def kill_strong(head, url: str) -> dict:
    import ray

    ray.init(address=head.gcs_address, log_to_driver=False)
    try:
        (named,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "llm-strong-v1" in a["name"]]
        from ray.util.state import list_actors

        (actor,) = list_actors(filters=[("name", "=", named["name"]), ("state", "=", "ALIVE")], detail=True)
        psutil.Process(actor.pid).kill()
    finally:
        ray.shutdown()
    killed_at = time.monotonic()
    during = []
    deadline = killed_at + 900
    while time.monotonic() < deadline:
        during += [ask(url, "strong"), ask(url, "auto")]
        if all(r["status"] == 200 and r["served_by"] == "strong" and not r["fallback"] for r in during[-2:]):
            break
        time.sleep(2)
    circuit = get_json(f"{url}/health")["circuits"]["strong"]
    return {"seconds_until_strong_serves_both_routes": round(time.monotonic() - killed_at, 1),
            "strong_circuit_after": circuit, "during": outcomes(during),
            "failed": sum(r["status"] != 200 for r in during)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=180)
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--storm-clients", type=int, default=48)
    parser.add_argument("--storm-tries", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench-out/protections.json"))
    args = parser.parse_args()
    during_start: list[dict] = []
    result: dict = {"command": "python -m scripts.bench_protections", "config": "configs/local-cpu.yaml",
                    "clients": args.clients, "duration_s": args.duration_s}
    deployed = time.monotonic()
    with serving(load_profile("local-cpu.yaml"), Path(f"/tmp/bench-protections-{uuid.uuid4().hex[:8]}.log"),
                 ("SERVE_APP_BENCH_RUN", uuid.uuid4().hex),
                 while_starting=lambda url: during_start.extend(ask(url, route, 30) for route in ROUTES)) as (url, head):
        result["start"] = {"seconds_to_health_ok": round(time.monotonic() - deployed, 1),
                           "during": outcomes(during_start),
                           "seconds_from_ok_to_own_tiers": until_own_tiers(url)}
        print(json.dumps(result["start"]), flush=True)
        result["closed_loop"] = asyncio.run(closed_loop(url, args.clients, args.duration_s))
        print(json.dumps(result["closed_loop"]), flush=True)
        wait_idle(url)
        result["kill_strong"] = kill_strong(head, url)
        print(json.dumps(result["kill_strong"]), flush=True)
        result["burst"] = {}
        for route in ("strong", "auto"):
            wait_idle(url)
            result["burst"][route] = asyncio.run(burst(url, route, args.burst))
        result["burst"]["limits_after"] = {name: b["limit"] for name, b in get_json(f"{url}/health")["backends"].items()}
        print(json.dumps(result["burst"]), flush=True)
        result["storm"] = asyncio.run(storm(url, args.storm_clients, args.storm_tries))
        stopped = time.monotonic()
        wait_idle(url)
        until_own_tiers(url)
        result["storm"]["seconds_from_storm_end_to_own_tiers"] = round(time.monotonic() - stopped, 1)
        result["storm"]["circuits_after"] = get_json(f"{url}/health")["circuits"]
        print(json.dumps(result["storm"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
