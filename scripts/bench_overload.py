"""Overload and fail-over benchmark: goodput with load shedding on versus off, sudden bursts against
vLLM's own server alone, throughput by closed-loop stream count, and fail-over time.

    .venv/bin/python -m scripts.bench_overload [--parts goodput,burst,streams,failover] [--out bench-out/overload.json]
    .venv/bin/python -m scripts.bench_overload --parts burst,streams [--burst 60] [--streams 1,4,16,32]

goodput: for each mode (shedding on: configs/local-cpu.yaml as shipped; off: the same with
`shed_ttft_target_s: null`; in both, the strong route does not fall back to the cheap tier unless
`--fallback-to-cheap`, since here both tiers share the same two cores) it starts `serve run`, measures
the sustainable request rate once (closed loop, one engine batch of streams on `strong`), then offers
`--overload` times that rate as an open-loop Poisson arrival stream for `--duration-s` and reports
goodput (requests meeting the TTFT and TPOT targets per second), TTFT percentiles, and the shares
answered / shed / failed.

burst and streams: one `serve run` of the shipped profile, unchanged. `--burst` requests at once per
route (`--burst-routes`), streamed and then whole; the first meets a router that has seen no request,
each later one an idle service, after the per-key rate limit's bucket refilled: admitted, refused (and
how fast), admitted-then-failed (a stream broken after its 200), first tokens within the TTFT target,
the plans `auto` chose, and every circuit's state after. Then `--streams` closed-loop clients per route
for `--streams-duration-s`: output tokens/s (from usage), TTFT p50/p99, plans. Then the same bursts on
vLLM's own OpenAI server alone (the strong model, its engine arguments and environment).

failover: a fresh `serve run` as shipped; it kills the cheap tier's replica while requests for `cheap`
keep coming and reports how long users waited for the fallback. Every process it starts is stopped
before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from scripts.bench_serving import engine_flags
from scripts.harness.cluster import app_args, free_port, wait_for, wait_idle
from scripts.harness.processes import stop_process_tree
from scripts.harness.streams import timed_chat
from serve_app.config import AppConfig
from serve_app.core.stats import percentile

ROOT = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8000"


async def one(client: httpx.AsyncClient, route: str, i: int, max_tokens: int | None, ignore_eos: bool = True,
              stream: bool = True, url: str = URL) -> dict:
    body = {"model": route, "messages": [{"role": "user", "content": f"Count from {i} to {i + 60}."}],
            "ignore_eos": ignore_eos, "temperature": 0}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    result = await timed_chat(client, f"{url}/v1/chat/completions", body, stream)
    if result["status"] == 200:
        ttft = result["ttft_s"] if result["ttft_s"] is not None else result["latency_s"]
        result |= {"ttft_s": ttft, "tpot_s": (result["latency_s"] - ttft) / max(1, (max_tokens or 1) - 1)}
    return result


async def closed_loop_rate(route: str, concurrency: int, duration_s: float, max_tokens: int) -> float:
    """Complete answers per second from `concurrency` closed-loop streams (`streams_at`)."""
    return (await streams_at(route, concurrency, duration_s, max_tokens))["answered_per_s"]


async def open_loop(route: str, rate: float, duration_s: float, max_tokens: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=1000)) as client:
        t, i = 0.0, 0
        begin = time.perf_counter()
        while t < duration_s:
            await asyncio.sleep(max(0.0, begin + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, route, i, max_tokens)))
            t += rng.expovariate(rate)
            i += 1
        return list(await asyncio.gather(*tasks))


def summarize(results: list[dict], duration_s: float, ttft_slo_s: float, tpot_slo_s: float) -> dict:
    answered = [r for r in results if r["status"] == 200]
    shed = [r for r in results if r["status"] in (429, 503)]
    good = [r for r in answered if r["ttft_s"] <= ttft_slo_s and r["tpot_s"] <= tpot_slo_s]
    ttfts = [r["ttft_s"] for r in answered]
    sheds = [r["latency_s"] for r in shed]

    return {
        "offered": len(results), "goodput_rps": round(len(good) / duration_s, 3),
        "answered_share": round(len(answered) / len(results), 3), "shed_share": round(len(shed) / len(results), 3),
        "failed_share": round(1 - (len(answered) + len(shed)) / len(results), 3),
        "ttft_p50_s": rounded(percentile(ttfts, 50)), "ttft_p99_s": rounded(percentile(ttfts, 99)),
        "shed_latency_p50_s": rounded(percentile(sheds, 50)), "shed_latency_p99_s": rounded(percentile(sheds, 99)),
        "served_by": dict(Counter(r["served_by"] for r in answered)),
        "rejected_by": dict(Counter(r.get("message") or r.get("error") for r in results if r["status"] != 200)),
    }


async def burst(route: str, n: int, max_tokens: int | None, stream: bool = True, url: str = URL) -> list[dict]:
    """`n` requests sent at once (distinct prompts: the answer cache must not rescue any)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n + 10)) as client:
        return list(await asyncio.gather(*(one(client, route, 7 * i, max_tokens, ignore_eos=False, stream=stream,
                                               url=url) for i in range(n))))


def summarize_burst(results: list[dict], ttft_target_s: float) -> dict:
    """Admitted: a 200. Refused: a 429 or 503 (before any work, by design). Failed: anything else, and an
    admitted stream that broke after its 200 (an error event, no [DONE]). A whole (non-streamed) answer's
    "first token" is its whole latency."""
    admitted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] in (429, 503)]
    ttfts, waits = [r["ttft_s"] for r in admitted if r["ttft_s"] is not None], [r["latency_s"] for r in refused]
    return {
        "sent": len(results), "admitted": len(admitted), "refused": len(refused),
        "failed": len(results) - len(admitted) - len(refused),
        "admitted_then_failed": sum(not r["complete"] for r in admitted),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "refusal_latency_p50_s": rounded(percentile(waits, 50)),
        "refusal_latency_max_s": round(max(waits), 3) if waits else None,
        "admitted_ttft_p50_s": rounded(percentile(ttfts, 50)), "admitted_ttft_p99_s": rounded(percentile(ttfts, 99)),
        "admitted_ttft_max_s": round(max(ttfts), 3) if ttfts else None,
        "first_token_within_target": sum(t <= ttft_target_s for t in ttfts),
        "served_by": dict(Counter(r["served_by"] for r in admitted)),
        "plans": dict(Counter(r["plan"] for r in admitted if r.get("plan"))),
        "refused_with": dict(Counter(f'{r["status"]} {r.get("code")}' for r in refused)),
        "refusals_with_retry_after": sum(r.get("retry_after") is not None for r in refused),
    }


async def streams_at(route: str, streams: int, duration_s: float, max_tokens: int, url: str = URL) -> dict:
    """`streams` closed-loop clients, each sending its next streamed request when its last one ends, for
    `duration_s`: output tokens per second (usage), TTFT percentiles, and the plans `auto` chose."""
    results: list[dict] = []
    deadline = time.perf_counter() + duration_s
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams + 10)) as client:
        async def worker(w: int):
            i = 0
            while time.perf_counter() < deadline:
                results.append(await one(client, route, 1000 * w + 7 * i, max_tokens, stream=True, url=url))
                i += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(streams)))
        elapsed = time.perf_counter() - started
    done = [r for r in results if r["status"] == 200 and r["complete"]]
    ttfts = [r["ttft_s"] for r in done if r["ttft_s"] is not None]
    return {"requests": len(results), "answered": len(done), "not_answered": len(results) - len(done),
            "answered_per_s": round(len(done) / elapsed, 3),
            "output_tokens_per_s": round(sum(r["tokens"] or 0 for r in done) / elapsed, 2),
            "ttft_p50_s": rounded(percentile(ttfts, 50)), "ttft_p99_s": rounded(percentile(ttfts, 99)),
            "plans": dict(Counter(r["plan"] for r in done if r.get("plan")))}


def circuits(url: str = URL) -> dict[str, str]:
    return httpx.get(f"{url}/health", timeout=10).json()["circuits"]


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def failover(duration_s: float, interval_s: float) -> dict:
    """Requests for `cheap` every `interval_s`; kill its replica; when did users get answers, and from whom?"""
    import ray

    ray.init(address="auto", log_to_driver=False)  # the cluster `serve run` started (auth off, see start())
    try:
        name = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "llm-cheap-v1" in a["name"])
        async def timed(client: httpx.AsyncClient) -> dict:
            sent = time.perf_counter()
            return {**await one(client, "cheap", 7, 8), "sent_at": sent}

        async with httpx.AsyncClient(timeout=600) as client:
            killed_at = None
            tasks = []
            begin = time.perf_counter()
            while time.perf_counter() - begin < duration_s:
                if killed_at is None and time.perf_counter() - begin > 5:
                    ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
                    killed_at = time.perf_counter()
                tasks.append(asyncio.create_task(timed(client)))
                await asyncio.sleep(interval_s)
            results = [{**r, "sent_s": r["sent_at"] - killed_at} for r in await asyncio.gather(*tasks)]
    finally:
        ray.shutdown()
    after = [r for r in results if r["sent_s"] >= 0]
    fallback = [r for r in after if r.get("served_by") not in (None, "cheap")]
    return {
        "requests_after_kill": len(after),
        "failed_after_kill": sum(1 for r in after if r["status"] != 200),
        "first_fallback_latency_s": round(fallback[0]["latency_s"], 3) if fallback else None,
        "fallback_latency_p50_s": rounded(percentile([r["latency_s"] for r in fallback], 50)),
        "fallback_latency_max_s": round(max(r["latency_s"] for r in fallback), 3) if fallback else None,
        "cheap_back_after_s": next((round(r["sent_s"], 1) for r in after if r.get("served_by") == "cheap"), None),
    }


def capacity(args: argparse.Namespace, shipped: dict) -> dict:
    """The burst and streams parts on one `serve run` of the shipped profile, unchanged: the first burst
    meets a router that has seen no request; each later one an idle service (nothing in flight). Then the
    same bursts on vLLM's own server alone (the strong model, the same engine arguments and environment)."""
    target = app_args(shipped)["resilience"]["shed_ttft_target_s"]
    access = app_args(shipped).get("access") or {}
    # Between bursts, the per-key rate limit's bucket refills (the benchmark is one caller): each burst
    # meets the service as a new caller would.
    refill_s = (access.get("burst_per_key") or 0) / (access.get("requests_per_minute_per_key") or math.inf) * 60
    report: dict = {}
    process = start(shipped)
    try:
        if "burst" in args.parts:
            report["burst"] = {"requests": args.burst, "max_tokens": args.burst_max_tokens, "ttft_target_s": target,
                               "profile": "configs/local-cpu.yaml as shipped", "app": {}}
            for route in args.burst_routes.split(","):
                for stream in (True, False):
                    wait_idle(URL)
                    time.sleep(refill_s)
                    results = asyncio.run(burst(route, args.burst, args.burst_max_tokens, stream))
                    wait_idle(URL)
                    key = f"{route} {'streamed' if stream else 'whole'}"
                    report["burst"]["app"][key] = {**summarize_burst(results, target), "circuits_after": circuits()}
                    print("burst", key, json.dumps(report["burst"]["app"][key]), flush=True)
        if "streams" in args.parts:
            report["streams"] = {"max_tokens": args.streams_max_tokens, "duration_s": args.streams_duration_s}
            for n in (int(x) for x in args.streams.split(",")):
                for route in args.streams_routes.split(","):
                    wait_idle(URL)
                    result = asyncio.run(streams_at(route, n, args.streams_duration_s, args.streams_max_tokens))
                    report["streams"][f"{route} x{n}"] = result
                    print("streams", route, n, json.dumps(result), flush=True)
    finally:
        stop_process_tree(process, first_signal=signal.SIGINT, grace_s=60)
    if "burst" in args.parts and not args.no_vllm:
        report["burst"]["vllm"] = vllm_bursts(args, shipped, target)
    return report


def vllm_bursts(args: argparse.Namespace, shipped: dict, target: float) -> dict:
    """The same bursts on `python -m vllm.entrypoints.openai.api_server` alone, with the strong tier's model,
    engine arguments and environment."""
    strong = AppConfig.model_validate(app_args(shipped)).tiers["strong"]
    name, port = Path(strong.model.source).name, free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [ROOT / ".venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", strong.model.resolved(),
         "--served-model-name", name, "--host", "127.0.0.1", f"--port={port}", *engine_flags(strong.engine.args)],
        cwd=ROOT, env={**os.environ, **strong.engine.env_vars}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = {}
    try:
        wait_for("vLLM's server", lambda: httpx.get(f"{url}/v1/models", timeout=10).status_code == 200, 900,
                 watch=[process])
        for stream in (True, False):
            results = asyncio.run(burst(name, args.burst, args.burst_max_tokens, stream, url=url))
            key = "streamed" if stream else "whole"
            report[key] = summarize_burst(results, target)
            print("burst vllm", key, json.dumps(report[key]), flush=True)
    finally:
        stop_process_tree(process, grace_s=60)
    return report


def start(config: dict) -> subprocess.Popen:
    path = Path(tempfile.mkdtemp()) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([ROOT / ".venv/bin/serve", "run", str(path)], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # env: RAY_AUTH_MODE below
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{URL}/v1/models", timeout=10).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(2)
    stop_process_tree(process, first_signal=signal.SIGINT)
    sys.exit("serve run did not come up")


def main() -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway loopback cluster; this driver joins it for the kill
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overload", type=float, default=3.0, help="offered load as a multiple of the sustainable rate")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ttft-slo-s", type=float, default=10.0)
    parser.add_argument("--tpot-slo-s", type=float, default=0.5)
    parser.add_argument("--parts", default="goodput,burst,streams,failover",
                        help="comma-separated: goodput, burst, streams, failover")
    parser.add_argument("--burst", type=int, default=60, help="requests sent at once to the idle service")
    parser.add_argument("--burst-routes", default="auto,strong")
    parser.add_argument("--burst-max-tokens", type=int, default=32, help="max_tokens of each burst request")
    parser.add_argument("--no-vllm", action="store_true", help="skip the bursts on vLLM's own server alone")
    parser.add_argument("--streams", default="1,4,16,32", help="closed-loop stream counts of the streams part")
    parser.add_argument("--streams-routes", default="strong,auto")
    parser.add_argument("--streams-duration-s", type=float, default=40.0)
    parser.add_argument("--streams-max-tokens", type=int, default=64)
    parser.add_argument("--failover-interval-s", type=float, default=1.5,
                        help="gap between `cheap` requests while its replica is killed (within the strong tier's capacity)")
    parser.add_argument("--failover-duration-s", type=float, default=150.0)
    parser.add_argument("--fallback-to-cheap", action="store_true",
                        help="keep the shipped strong -> cheap fallback (both tiers share this machine's cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "overload.json")
    args = parser.parse_args()

    shipped = yaml.safe_load((ROOT / "configs/local-cpu.yaml").read_text())
    if not args.fallback_to_cheap:
        # Both tiers share these two cores: under overload, strong's fallback to cheap would only move
        # the excess onto the same CPU (on GPUs each tier has its own). Measure one tier's shedding.
        chains = app_args(shipped)["resilience"]["fallbacks"]
        chains["strong"] = [step for step in chains["strong"] if step != "cheap"]
    unshed = json.loads(json.dumps(shipped))
    app_args(unshed)["resilience"]["shed_ttft_target_s"] = None
    slots = AppConfig.model_validate(app_args(shipped)).tiers["strong"].engine_batch
    report: dict = {"command": "python -m scripts.bench_overload " + " ".join(sys.argv[1:]), "max_tokens": args.max_tokens, "duration_s": args.duration_s, "overload": args.overload,
                    "strong_fallbacks": app_args(shipped)["resilience"]["fallbacks"]["strong"],
                    "ttft_slo_s": args.ttft_slo_s, "tpot_slo_s": args.tpot_slo_s}
    modes = [("shedding_on", shipped), ("shedding_off", unshed)] if "goodput" in args.parts else []
    for mode, config in modes:
        process = start(config)
        try:
            if "sustainable_rps" not in report:
                report["sustainable_rps"] = round(asyncio.run(closed_loop_rate("strong", slots, 45, args.max_tokens)), 3)
            rate = report["sustainable_rps"] * args.overload
            results = asyncio.run(open_loop("strong", rate, args.duration_s, args.max_tokens, seed=1))
            report[mode] = {"offered_rps": round(rate, 3), **summarize(results, args.duration_s, args.ttft_slo_s, args.tpot_slo_s)}
            print(mode, json.dumps(report[mode]), flush=True)
        finally:
            stop_process_tree(process, first_signal=signal.SIGINT, grace_s=60)
    if "burst" in args.parts or "streams" in args.parts:
        report |= capacity(args, yaml.safe_load((ROOT / "configs/local-cpu.yaml").read_text()))
    if "failover" in args.parts:
        process = start(shipped)
        try:
            report["failover"] = {"interval_s": args.failover_interval_s,
                                  **asyncio.run(failover(args.failover_duration_s, args.failover_interval_s))}
            print("failover", json.dumps(report["failover"]), flush=True)
        finally:
            stop_process_tree(process, first_signal=signal.SIGINT, grace_s=60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
