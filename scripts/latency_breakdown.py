"""Where a request's fixed latency goes, hop by hop, at one stream: this app's `strong` route against
vLLM's own OpenAI server on the same model and engine settings, short and long prompts, in one run.

    .venv/bin/python -m scripts.latency_breakdown [--requests 30] [--long-words 200] [--max-tokens 1]
        [--pause-s 0] [--app-variant NAME:KEY=VALUE[,KEY=VALUE]]... [--vllm-beside-app]
        [--out bench-out/latency-breakdown.json]

The app runs on a throwaway Ray head (the local profile, as scripts/bench_serving.py starts it) with its
spans sent to an in-process OTLP receiver; then vLLM's server runs alone. Each system gets the same
streamed chat requests, one at a time, of `--max-tokens` tokens each (ignore_eos; above 1 the client's
TPOT is reported too): `--requests` short ones ("Hi": 31 tokens with the template, less than one KV
block of 32, so never a prefix-cache hit) and as many long ones (`--long-words` words: 234 tokens), each
with a unique opening so that none is a prefix-cache hit. For every app request, the client's clock and
its trace's spans (same host, same wall clock) split the time to the first content byte into:
- `proxy_in`: client send → the router's request span (HTTP proxy, ASGI, auth, body parse);
- `router`: request span → the attempt span (validation, routing, admission, breaker);
- `dispatch`: attempt span → the engine's generate span (handle call, replica choice, the replica's
  `Accepted`, chat template and tokenization; `template_ms` times the last two apart, offline);
- `engine`: the engine's own time to first token (AsyncLLM: scheduling, prefill, first sample);
- `engine_to_router`: first token in the engine → first chunk in the router's attempt;
- `router_to_client`: that chunk → the client's first content byte (router, proxy, HTTP).
Medians per hop and prompt length, and the TTFT p50 of each system: the app's addition is the gap.
The app runs twice: traced, for the split, and as shipped (`app:untraced`, tracing as the profile
sets it, off in the local one), the figure to hold against vLLM's; each `--app-variant` runs it once
more, untraced, its Ray head started with those environment variables (Ray Serve's RAY_SERVE_*
settings), for an A/B against the shipped app in the same run. `--vllm-beside-app` runs vLLM's
server once more with the app up and idle beside it: what the app's idle processes (Ray's and
Serve's) alone cost an engine that shares the cores with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from scripts.bench_serving import started
from scripts.harness.cluster import ROOT, app_args, assignments, load_profile, wait_for
from scripts.harness.spans import ReceivedSpan, SpanCollector
from scripts.harness.streams import Streamed, stream_chat
from serve_app.config import AppConfig

BESIDE_IDLE_APP = "vllm:beside-idle-app"
"""The run of vLLM's server with the app up and idle beside it (`--vllm-beside-app`)."""
HOPS = ("proxy_in", "router", "dispatch", "engine", "engine_to_router", "router_to_client")


def prompts(count: int, long_words: int) -> dict[str, list[str]]:
    words = "the cache of a model serves every request that shares its prefix with one before".split()
    long_text = " ".join(words[i % len(words)] for i in range(long_words))
    return {"short": ["Hi"] * count, "long": [f"Note {i}. {long_text}" for i in range(count)]}


def ask(http: httpx.Client, model: str, content: str, max_tokens: int) -> Streamed:
    """One streamed request of exactly `max_tokens` tokens."""
    return stream_chat(http, {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0,
                              "max_tokens": max_tokens, "ignore_eos": True})


def hops(spans: list[ReceivedSpan], sent: int, first: int) -> dict[str, float]:
    """Milliseconds per hop of one request, from its trace (see the module's docstring)."""
    (request,) = [s for s in spans if s.name.startswith("chat ")]
    (attempt,) = [s for s in spans if s.name.startswith("attempt ")]
    (engine,) = [s for s in spans if s.name.startswith("generate ")]
    engine_first = engine.start_ns + engine.attributes["serve_app.ttft_s"] * 1e9
    router_first = attempt.start_ns + attempt.attributes["serve_app.ttft_s"] * 1e9
    marks = (sent, request.start_ns, attempt.start_ns, engine.start_ns, engine_first, router_first, first)
    return {hop: (after - before) / 1e6 for hop, before, after in zip(HOPS, marks[:-1], marks[1:], strict=True)}


def template_ms(model_dir: Path, texts: list[str]) -> float:
    """Median milliseconds to apply the chat template and tokenize, as the engine replica does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    times = []
    for text in texts:
        started_at = time.perf_counter()
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        times.append((time.perf_counter() - started_at) * 1e3)
    return statistics.median(times)


def measure(base_url: str, model: str, texts: list[str], max_tokens: int, pause_s: float,
            spans: SpanCollector | None) -> dict:
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for _ in range(3):  # warm: the first requests of a fresh process are slower
            ask(http, model, "Warm up.", max_tokens)
        samples = []
        for text in texts:
            time.sleep(pause_s)
            samples.append(ask(http, model, text, max_tokens))
    result = {"ttft_p50_ms": round(statistics.median(s.ttft_s for s in samples) * 1e3, 1)}
    if max_tokens > 1:
        result["tpot_p50_ms"] = round(statistics.median((s.latency_s - s.ttft_s) / (max_tokens - 1)
                                                        for s in samples) * 1e3, 2)
    if spans is not None:
        def trace_of(trace_id: str):
            found = spans.trace(trace_id)
            return found if sum(s.name.startswith(("chat ", "attempt ", "generate ")) for s in found) == 3 else None

        split = [hops(wait_for(f"trace {s.headers['x-trace-id']}", lambda s=s: trace_of(s.headers["x-trace-id"]), 60,
                               0.5), s.sent_ns, s.first_ns) for s in samples]
        result["hops_p50_ms"] = {hop: round(statistics.median(row[hop] for row in split), 2) for hop in HOPS}
    return result


def variant(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:KEY=VALUE[,KEY=VALUE]` as (name, environment)."""
    name, _, settings = text.partition(":")
    env = assignments(settings.split(","))
    if not name or not env:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    return name, env


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--long-words", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=1, help="tokens per answer (ignore_eos); >1 adds TPOT")
    parser.add_argument("--pause-s", type=float, default=0.0, help="idle time before each request (0: back to back)")
    parser.add_argument("--app-variant", type=variant, action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="the app again, its Ray head with these environment variables (repeatable)")
    parser.add_argument("--vllm-beside-app", action="store_true",
                        help="vLLM's server once more, with the app up and idle beside it (its background CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/latency-breakdown.json")
    return parser


def main() -> None:
    args = arguments().parse_args()
    profile = load_profile(args.config)
    config = AppConfig.model_validate(app_args(profile))
    strong = config.tiers[config.cascade.strong_tier]
    texts = prompts(args.requests, args.long_words)
    spans = SpanCollector()
    traced = json.loads(json.dumps(profile))
    app_args(traced)["observability"] = {"tracing": {"exporter": "otlp", "otlp_endpoint": spans.endpoint,
                                                     "export_interval_ms": 500}}
    variants = "".join(f" --app-variant {name}:{','.join(f'{k}={v}' for k, v in env.items())}"
                       for name, env in args.app_variant)
    result: dict = {"command": f"python -m scripts.latency_breakdown --requests {args.requests} "
                               f"--long-words {args.long_words} --max-tokens {args.max_tokens} --pause-s {args.pause_s:g}"
                               + variants + (" --vllm-beside-app" if args.vllm_beside_app else ""),
                    "systems": {}, "variants": dict(args.app_variant)}
    # (label, system, profile, Ray environment, span collector): the traced app gives the split, the
    # untraced one (the profile as shipped) and its variants the TTFT to compare with vLLM's.
    runs = [("app", "app", traced, None, spans), ("app:untraced", "app", profile, None, None),
            *((f"app:{name}", "app", profile, env, None) for name, env in args.app_variant),
            ("vllm", "vllm", profile, None, None)]
    if args.vllm_beside_app:
        runs.append((BESIDE_IDLE_APP, "vllm", profile, None, None))
    try:
        with tempfile.TemporaryDirectory() as folder:
            for label, system, deployed, env, collector in runs:
                with contextlib.ExitStack() as stack:
                    if label == BESIDE_IDLE_APP:  # the app up and idle, for its processes' background CPU
                        stack.enter_context(started("app", profile, 1, Path(folder), label="idle-app"))
                    target = stack.enter_context(started(system, deployed, 1, Path(folder), ray_env=env,
                                                         label=label.replace(":", "-")))
                    model = target.models["strong"]
                    result["systems"][label] = {length: measure(target.base_url, model, batch, args.max_tokens,
                                                                args.pause_s, collector)
                                                for length, batch in texts.items()}
    finally:
        spans.close()
    result["template_ms"] = {length: round(template_ms(strong.model.resolved(), batch), 2)
                             for length, batch in texts.items()}
    systems = result["systems"]
    result["added_ttft_p50_ms"] = {
        label: {length: round(systems[label][length]["ttft_p50_ms"] - systems["vllm"][length]["ttft_p50_ms"], 1)
                for length in texts} for label in systems if label != "vllm"}
    if args.vllm_beside_app:  # what the idle app's processes alone cost vLLM's own server
        result["beside_idle_app_added_ttft_p50_ms"] = result["added_ttft_p50_ms"].pop(BESIDE_IDLE_APP)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
