"""Router capacity at GPU-like token rates: synthetic tiers (configs/synthetic.yaml) behind the real app.

    .venv/bin/python -m scripts.bench_capacity --out docs/results/capacity.json --plot docs/capacity.png
        [--streams 1 64 256 1024] [--intervals 0 50] [--router-replicas 1] [--seconds 10]
        [--ingress serve-proxy|haproxy] [--tokens-per-s 50] [--max-tokens 256] [--append]

It starts a Ray head (behind Ray Serve's Python proxy, or its HAProxy
ingress, in which the router replica serves HTTP itself), deploys the synthetic profile, and for each stream
interval (per request, `stream_interval_ms`) and each number of concurrent streams runs a closed loop of
streamed chat requests on the `strong` route. Over a measured window it reports:
- offered tokens/s (streams x the synthetic pace), the tokens/s the engine replicas streamed (their
  `replica_info` counters) and the tokens/s the clients received;
- TTFT p50/p99, TPOT p50/p99 and the gap between a stream's messages, beside the synthetic engine
  called directly in this process at the same number of streams;
- CPU-seconds per 1,000 delivered tokens in the proxy (Serve's proxy actor, or HAProxy), the router replicas, the engine replicas and the
  client (this process), from each process's CPU times.

The client is lean on purpose: raw HTTP/1.1 over asyncio, counting tokens in the bytes it reads (a
synthetic token is " w<id>"), so that at a thousand streams it measures the app, not a JSON parser.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from scripts.harness.cluster import (
    INGRESSES,
    RayHead,
    assignments,
    free_port,
    ingress_env,
    load_profile,
    wait_until_running,
)
from serve_app.config import AppConfig, SyntheticEngineConfig
from serve_app.core.generation import GenerationRequest

MAX_TOKENS = 256
MARKER = ("SERVE_APP_BENCH", "capacity")
INGRESS_LABELS = {"serve-proxy": "Serve proxy", "haproxy": "HAProxy"}


@dataclass
class Answer:
    sent: float
    reads: list[tuple[float, int]] = field(default_factory=list)
    """(arrival, tokens) of every read that held tokens."""
    status: int | None = None


TOKEN = re.compile(rb" w\d")
"""A synthetic token in the stream's JSON (deployments.synthetic.decode), and in nothing else it carries."""


def request_bytes(port: int, interval_ms: float, i: int, max_tokens: int = MAX_TOKENS) -> bytes:
    body = json.dumps({"model": "strong", "max_tokens": max_tokens, "stream": True, "stream_interval_ms": interval_ms,
                       "messages": [{"role": "user", "content": f"capacity stream {i}"}]}).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def stream_loop(port: int, interval_ms: float, i: int, stop_at: float, answers: list[Answer],
                      max_tokens: int = MAX_TOKENS) -> None:
    loop = asyncio.get_running_loop()
    request = request_bytes(port, interval_ms, i, max_tokens)
    while loop.time() < stop_at:
        answer = Answer(loop.time())
        answers.append(answer)  # counted as it streams: the window may end before it does
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                answer.status = int((await reader.readline()).split()[1])
                while answer.status == 200 and (data := await reader.read(65536)):
                    if tokens := len(TOKEN.findall(data)):
                        answer.reads.append((loop.time(), tokens))
            finally:
                writer.close()
        if answer.status != 200:
            await asyncio.sleep(0.2)  # a refusal: back off a little, as a client would


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def finished(answers: list[Answer], start: float, end: float, max_tokens: int = MAX_TOKENS) -> list[Answer]:
    """The answers whose last token came in the window, whole."""
    return [a for a in answers if a.reads and start <= a.reads[-1][0] < end and sum(n for _, n in a.reads) == max_tokens]


def latencies(answers: list[Answer], start: float, end: float, max_tokens: int = MAX_TOKENS) -> dict[str, float | None]:
    """TTFT of every answer whose first token came before the window's end (the ramp's too: a burst of
    streams), TPOT of answers that finished in the window, and the gaps between messages in it (ms)."""
    ttft = [a.reads[0][0] - a.sent for a in answers if a.reads and a.reads[0][0] < end]
    tpot = [(a.reads[-1][0] - a.reads[0][0]) / (max_tokens - 1) for a in finished(answers, start, end, max_tokens)
            if len(a.reads) > 1]
    gaps = [later - earlier for a in answers for (earlier, _), (later, _) in zip(a.reads, a.reads[1:], strict=False)
            if start <= later < end]
    return {f"{name}_{q}_ms": None if (v := pct(values, p)) is None else round(v * 1000, 2)
            for name, values in (("ttft", ttft), ("tpot", tpot), ("gap", gaps)) for q, p in (("p50", .5), ("p99", .99))}


def processes() -> dict[str, list[psutil.Process]]:
    """This machine's serving processes by role."""
    found = collections.defaultdict(list)
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            proxy = "ProxyActor" in command or Path(process.exe()).name == "haproxy"  # Ray Serve's HAProxy ingress
            role = ("proxy" if proxy else "router" if "ServeReplica:llm:router" in command
                    else "engine" if "ServeReplica:llm:llm-" in command else None)
            if role:
                found[role].append(process)
    found["client"].append(psutil.Process())
    return found


def cpu_seconds(by_role: dict[str, list[psutil.Process]]) -> dict[str, float]:
    totals = {}
    for role, members in by_role.items():
        total = 0.0
        for process in members:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        totals[role] = total
    return totals


async def engine_tokens(handles) -> tuple[int, float] | None:
    """Tokens the engines have generated, and when the last of them said so (their clock); None when an
    engine replica did not answer within a minute (its event loop is behind the load)."""
    try:
        infos = await asyncio.wait_for(asyncio.gather(*(h.replica_info.remote() for h in handles)), 60)
    except TimeoutError:
        return None
    return sum(i["generated_tokens"] for i in infos), max(i["at"] for i in infos)


async def drained(handles, timeout_s: float = 120) -> None:
    """Wait until the engines hold no request: the last level's abandoned answers must not load the next."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            calls = asyncio.gather(*(h.num_unfinished_requests.remote() for h in handles))
            if not sum(await asyncio.wait_for(calls, max(1.0, deadline - loop.time()))):
                return
        await asyncio.sleep(0.5)


async def app_level(port: int, streams: int, interval_ms: float, seconds: float, handles, pace: float,
                    max_tokens: int = MAX_TOKENS) -> dict:
    loop = asyncio.get_running_loop()
    ramp_s, settle_s = min(2.0, streams / 200), 3.0 + streams / 128
    start = loop.time() + ramp_s + settle_s
    end = start + seconds
    answers: list[Answer] = []
    tasks = []
    for i in range(streams):
        tasks.append(loop.create_task(stream_loop(port, interval_ms, i, end, answers, max_tokens)))
        if ramp_s:
            await asyncio.sleep(ramp_s / streams)
    await asyncio.sleep(max(0.0, start - loop.time()))
    roles = processes()
    # The engines' counters answer when a replica gets to the call (behind the load): read beside the window.
    cpu_before, measured_from = cpu_seconds(roles), loop.time()
    before = loop.create_task(engine_tokens(handles))
    await asyncio.sleep(max(0.0, end - loop.time()))
    cpu_after, measured_s = cpu_seconds(roles), loop.time() - measured_from
    counted_before, counted_after = await before, await engine_tokens(handles)
    for task in tasks:  # answers still streaming are cut: the window is over
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await drained(handles)
    delivered = sum(n for a in answers for t, n in a.reads if start <= t < end)
    answered = len(finished(answers, start, end, max_tokens))
    spent = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
    per_k = {role: round(cpu / max(delivered * measured_s / seconds, 1) * 1000, 4) for role, cpu in spent.items()}
    return {"streams": streams, "interval_ms": interval_ms, "max_tokens": max_tokens, "offered_tokens_per_s": streams * pace,
            "engine_tokens_per_s": None if counted_before is None or counted_after is None else
            round((counted_after[0] - counted_before[0]) / (counted_after[1] - counted_before[1]), 1),
            "delivered_tokens_per_s": round(delivered / seconds, 1),
            "refused": sum(1 for a in answers if a.status not in (200, None)),
            "answers_per_s": round(answered / seconds, 1),
            "cpu_ms_per_answer": {role: round(cpu / measured_s * seconds / answered * 1000, 3) for role, cpu in spent.items()}
                                 if answered else None,
            "cpu_s_per_1k_tokens": per_k,
            "cpu_share": {role: round(cpu / measured_s, 3) for role, cpu in spent.items()},
            **latencies(answers, start, end, max_tokens)}


async def ttft_probe(port: int, interval_ms: float, requests: int = 30) -> dict[str, float | None]:
    """One stream of short answers, one after another: the time to first token at one stream."""
    answers: list[Answer] = []
    loop = asyncio.get_running_loop()
    for i in range(requests):
        await stream_loop(port, interval_ms, i, loop.time() + 1e-3, answers, max_tokens=4)
    ttft = [a.reads[0][0] - a.sent for a in answers if a.reads]
    return {"ttft_p50_ms": round(pct(ttft, .5) * 1000, 2), "ttft_p99_ms": round(pct(ttft, .99) * 1000, 2)}


async def direct_level(streams: int, seconds: float, pace: SyntheticEngineConfig) -> dict:
    """The synthetic engine called in this process: the latencies the app adds to."""
    from deployments.synthetic import SyntheticEngine

    engine = SyntheticEngine("direct", pace, export_metrics=False)
    loop = asyncio.get_running_loop()
    end, answers = loop.time() + seconds, []

    async def one(i: int) -> None:
        while loop.time() < end:
            answer = Answer(loop.time())
            async for chunk in engine.generate(GenerationRequest(f"d{i}-{answer.sent}", {"max_tokens": MAX_TOKENS},
                                                                 prompt=f"capacity stream {i}")):
                answer.reads.append((loop.time(), len(chunk.token_ids)))
            answers.append(answer)

    await asyncio.gather(*(one(i) for i in range(streams)))
    return {"streams": streams, "pace_tokens_per_s": pace.tokens_per_s, **latencies(answers, end - seconds, end)}


def deploy(head: RayHead, router_replicas: int, port: int, pace: SyntheticEngineConfig) -> None:
    profile = load_profile("synthetic.yaml")
    profile["http_options"]["port"] = port
    args = profile["applications"][0]["args"]
    args["router"]["deployment"]["num_replicas"] = router_replicas
    for tier in args["tiers"].values():
        tier["engine"]["synthetic"] = {**tier["engine"]["synthetic"], "tokens_per_s": pace.tokens_per_s}
    head.deploy(profile, cli=False)
    wait_until_running(head.dashboard_url)


def engine_handles(head: RayHead) -> list:
    import ray
    from ray import serve

    ray.init(address=head.gcs_address, log_to_driver=False, ignore_reinit_error=True)
    config = AppConfig.model_validate(load_profile("synthetic.yaml")["applications"][0]["args"])
    return [serve.get_deployment_handle(e.deployment, "llm") for e in config.engine_versions() if e.tier == "strong"]


def run(args: argparse.Namespace) -> dict:
    pace = AppConfig.model_validate(load_profile("synthetic.yaml")["applications"][0]["args"]).tiers["strong"].engine.synthetic
    if args.tokens_per_s is not None:
        pace = pace.model_copy(update={"tokens_per_s": args.tokens_per_s})
    result = {"pace_tokens_per_s": pace.tokens_per_s, "max_tokens": MAX_TOKENS, "seconds": args.seconds,
              "direct": [], "app": [], "ttft_one_stream": []}
    if args.append and args.out and args.out.exists():  # one run per router replica count, one file
        result = json.loads(args.out.read_text())
    if not any(level.get("pace_tokens_per_s", result["pace_tokens_per_s"]) == pace.tokens_per_s
               for level in result["direct"]):
        result["direct"] += [asyncio.run(direct_level(n, min(args.seconds, 5), pace)) for n in args.streams]
    env = {**ingress_env(args.ingress), **assignments(args.env)}
    replicas = args.router_replicas
    head = RayHead.start(Path(args.log_dir) / f"capacity-{replicas}.log", MARKER, num_cpus=16, env=env)
    try:
        port = free_port()
        deploy(head, replicas, port, pace)
        handles = engine_handles(head)
        for interval in args.intervals:
            probe = asyncio.run(ttft_probe(port, interval))
            result["ttft_one_stream"].append({"router_replicas": replicas, "ingress": args.ingress, "interval_ms": interval,
                                              "pace_tokens_per_s": pace.tokens_per_s, **probe})
            print(json.dumps(result["ttft_one_stream"][-1]), flush=True)
            for streams in args.streams:
                level = asyncio.run(app_level(port, streams, interval, args.seconds, handles, pace.tokens_per_s,
                                              args.max_tokens))
                level.update(router_replicas=replicas, ingress=args.ingress, pace_tokens_per_s=pace.tokens_per_s)
                print(json.dumps(level), flush=True)
                result["app"].append(level)
    finally:
        import ray

        ray.shutdown()
        head.stop()
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    series = collections.defaultdict(list)
    for level in result["app"]:
        pace = level.get("pace_tokens_per_s", result["pace_tokens_per_s"])
        series[(level["ingress"], level["router_replicas"], level["interval_ms"], pace)].append(level)
    paces = {key[3] for key in series}
    top = max(level["offered_tokens_per_s"] for level in result["app"])
    axis.plot([0, top], [0, top], color="grey", linestyle=":", label="offered")
    for (ingress, replicas, interval, pace), levels in sorted(series.items()):
        axis.plot([lv["offered_tokens_per_s"] for lv in levels], [lv["delivered_tokens_per_s"] for lv in levels],
                  marker="o", label=f"{INGRESS_LABELS[ingress]}, {replicas} router replica{'s' if replicas > 1 else ''}, "
                                    f"{'per-token messages' if not interval else f'{interval:g} ms interval'}"
                                    + (f", {pace:g} tok/s per stream" if len(paces) > 1 else ""))
    axis.set_xlabel("offered tokens/s (streams x synthetic pace)")
    axis.set_ylabel("delivered tokens/s (received by the clients)")
    axis.set_title("Router capacity on synthetic tiers (2-core CPU host)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64, 256, 1024])
    parser.add_argument("--intervals", type=float, nargs="+", default=[0, 50])
    parser.add_argument("--router-replicas", type=int, default=1,
                        help="one count per run (append runs into one file): a second Ray head in the same driver "
                             "would reuse Serve's cached routers to the first one's replicas")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                        help="each answer's length; short answers (e.g. 4) measure the fixed cost of a request")
    parser.add_argument("--tokens-per-s", type=float,
                        help="each synthetic stream's pace (default: the profile's, 50), e.g. 100 for a smaller model")
    parser.add_argument("--log-dir", default="/tmp")
    parser.add_argument("--ingress", choices=INGRESSES, default="serve-proxy",
                        help="Ray Serve's Python proxy, or its HAProxy ingress (scripts.harness.cluster.ingress_env)")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the cluster's processes (Ray Serve settings)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--append", action="store_true", help="add this run's levels to those already in --out")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args)
    result["wall_s"] = round(time.monotonic() - started)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    for level in result["app"]:
        print(f"{level['ingress']}, {level['router_replicas']} router, {level['interval_ms']:g} ms, {level['streams']:5d} streams: "
              f"offered {level['offered_tokens_per_s']:8.0f}, delivered {level['delivered_tokens_per_s']:8.0f} tok/s, "
              f"TTFT p50 {level['ttft_p50_ms']} ms, router {level['cpu_s_per_1k_tokens'].get('router')} CPU-s/1k")


if __name__ == "__main__":
    main()
