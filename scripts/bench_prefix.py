"""Prefix-aware routing against Ray Serve's default, on a tier with two replicas, in one run.

    .venv/bin/python -m scripts.bench_prefix [--conversations 16] [--turns 4] [--streams 4] [--rounds 2]
        [--imbalanced-threshold 2] [--out bench-out/prefix-routing.json]

A throwaway Ray head runs the local profile with the strong tier at two replicas. The same workload is
sent once per arm and round, the arms alternating (default, prefix, default, prefix, ...), each arm
deployed over the last through Serve's REST API:
- default: Ray Serve's power of two choices on queue length;
- prefix: `deployments.prefix_router:PrefixAffinityRouter` (Ray Serve LLM's prefix-cache-affinity router)
  with `imbalanced_threshold`.
The workload: `--conversations` chats on the `strong` route, `--streams` at a time, each `--turns` turns
long. Every chat opens with one of `--system-prompts` shared system prompts and a long first message of
its own (a document to discuss), then asks short questions; each answer (16 tokens, temperature 0) goes
back into the history. Every arm's run salts its text, so no run reuses another's cache.

Per run: TTFT p50/p99 (first streamed content byte) over every turn and over the follow-up turns,
vLLM's prefix-cache hit rate (its own counters, `vllm:prefix_cache_hits` / `queries`, summed over the
tier's replicas as Ray exports them), and each replica's share of the tier's requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scripts.harness.cluster import (
    ROOT,
    RayHead,
    app_args,
    free_port,
    load_profile,
    running_replicas,
    wait_for,
    wait_until_running,
)
from scripts.harness.metrics import Samples, scrape, served_by_replica, total
from scripts.harness.streams import stream_chat
from serve_app.config import AppConfig, engine_deployment
from serve_app.core.stats import percentile

MARKER = ("SERVE_APP_BENCH_RUN", str(os.getpid()))
ROUTER = "deployments.prefix_router:PrefixAffinityRouter"
WORDS = ("model", "serving", "latency", "token", "cache", "replica", "request", "answer", "system", "prompt",
         "engine", "batch", "memory", "queue", "route", "tier", "cost", "budget", "stream", "decode", "prefill",
         "block", "reuse", "policy", "user", "reply", "careful", "short", "clear", "always", "never", "because")


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def conversations(args: argparse.Namespace, salt: str) -> list[list[dict]]:
    """Each chat's opening: a shared system prompt and its own document; the questions follow per turn."""
    rng = random.Random(args.seed)
    systems = [f"[{salt}] You are assistant {i}. " + text(rng, args.system_words) for i in range(args.system_prompts)]
    return [[{"role": "system", "content": systems[i % len(systems)]},
             {"role": "user", "content": f"Document {i}: {text(rng, args.document_words)} Summarize it."}]
            for i in range(args.conversations)]


def chat(http: httpx.Client, messages: list[dict]) -> tuple[float, str]:
    """One streamed turn on `strong`: seconds to the first token, and the answer."""
    answer = stream_chat(http, {"model": "strong", "messages": messages, "max_tokens": 16, "temperature": 0})
    return answer.ttft_s, answer.text


def converse(base_url: str, opening: list[dict], turns: int, seed: int) -> list[tuple[int, float]]:
    rng, messages, ttfts = random.Random(seed), list(opening), []
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for turn in range(turns):
            ttft, answer = chat(http, messages)
            ttfts.append((turn, ttft))
            messages += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": f"And {text(rng, 6)} Why?"}]
    return ttfts


def prefix_counters(samples: Samples, model: str) -> tuple[float, float]:
    """vLLM's prefix-cache (hits, queries) in tokens, summed over every engine serving `model`."""
    return (total(samples, "ray_vllm_prefix_cache_hits_total", model_name=model),
            total(samples, "ray_vllm_prefix_cache_queries_total", model_name=model))


def settled(head: RayHead, model: str, deployment: str, served_before: float) -> Samples:
    """Ray exports metrics every few seconds: a snapshot once the tier's request counter has moved and two
    scrapes a few seconds apart agree on vLLM's counters."""
    last: list = [None]

    def stable():
        samples = scrape(head.metrics_url)
        counters = (prefix_counters(samples, model), sum(served_by_replica(samples, deployment).values()))
        same, last[0] = counters == last[0] and counters[1] > served_before, counters
        return samples if same else None

    return wait_for("the metrics to settle", stable, 180, 6)


def arm_profile(profile: dict, port: int, tier: str, router: dict | None) -> dict:
    config = json.loads(json.dumps(profile))
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    deployment = app_args(config)["tiers"][tier]["deployment"]
    deployment.update(num_replicas=2)
    deployment.pop("request_router_config", None)
    if router is not None:
        deployment["request_router_config"] = router
    return config


def ready(head: RayHead, base_url: str, deployment: str) -> None:
    """The app RUNNING with two replicas of the tier, and warm: a redeployed router admits one request per
    tier until it has seen a first token."""
    wait_until_running(head.dashboard_url)
    wait_for("two running replicas", lambda: running_replicas(head.dashboard_url, deployment) == 2, 900, 5)
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for _ in range(4):
            chat(http, [{"role": "user", "content": "Say hi."}])


def run_arm(head: RayHead, base_url: str, args: argparse.Namespace, name: str, salt: str, model: str,
            deployment: str) -> dict:
    before = settled(head, model, deployment, -1)
    served_before = served_by_replica(before, deployment)
    started = time.monotonic()
    with ThreadPoolExecutor(args.streams) as pool:
        results = list(pool.map(lambda c: converse(base_url, c[1], args.turns, args.seed + c[0]),
                                enumerate(conversations(args, salt))))
    wall = time.monotonic() - started
    after = settled(head, model, deployment, sum(served_before.values()))
    hits, queries = (a - b for a, b in zip(prefix_counters(after, model), prefix_counters(before, model), strict=True))
    served = {replica: n - served_before.get(replica, 0)
              for replica, n in served_by_replica(after, deployment).items()}
    every = [ttft for chat_ttfts in results for _, ttft in chat_ttfts]
    follow_ups = [ttft for chat_ttfts in results for turn, ttft in chat_ttfts if turn > 0]
    return {"arm": name, "requests": len(every), "wall_s": round(wall, 1),
            "ttft_p50_s": round(percentile(every, 50), 4), "ttft_p99_s": round(percentile(every, 99), 4),
            "follow_up_ttft_p50_s": round(percentile(follow_ups, 50), 4),
            "follow_up_ttft_p99_s": round(percentile(follow_ups, 99), 4),
            "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
            "prefix_cache_queried_tokens": queries,
            "replica_share": sorted((round(n / max(1, sum(served.values())), 3) for n in served.values() if n),
                                    reverse=True)}


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for arm in ("default", "prefix"):
        mine = [run for run in runs if run["arm"] == arm]
        summary[arm] = {key: round(statistics.mean(run[key] for run in mine), 4)
                        for key in ("ttft_p50_s", "ttft_p99_s", "follow_up_ttft_p50_s", "follow_up_ttft_p99_s",
                                    "prefix_cache_hit_rate")}
    return summary


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml")
    parser.add_argument("--tier", default="strong")
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--system-prompts", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=120)
    parser.add_argument("--document-words", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--imbalanced-threshold", type=float, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/prefix-routing.json")
    return parser


def main() -> None:
    args = arguments().parse_args()
    profile = load_profile(args.config)
    config = AppConfig.model_validate(app_args(profile))
    tier = config.tiers[args.tier]
    model = tier.model.served_name or tier.model.resolved()
    deployment = engine_deployment(args.tier, tier.default_version)
    routers = {"default": None, "prefix": {"request_router_class": ROUTER,
                                           "request_router_kwargs": {"imbalanced_threshold": args.imbalanced_threshold}}}
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        head = RayHead.start(Path(folder) / "ray.log", MARKER)
        try:
            for round_ in range(args.rounds):
                for arm, router in routers.items():
                    head.deploy(arm_profile(profile, port, args.tier, router), cli=False)
                    ready(head, base_url, deployment)
                    runs.append(run_arm(head, base_url, args, arm, f"{round_}-{arm}", model, deployment))
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            head.stop()
    result = {"command": "python -m scripts.bench_prefix " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                    vars(args).items() if k not in ("config", "out")),
              "profile": str(args.config.relative_to(ROOT)), "runs": runs, "summary": summarize(runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
