"""TTFT and TPOT of single streamed requests per route, through the OpenAI SDK.

    .venv/bin/python -m scripts.request_latency [--base-url http://127.0.0.1:8000/v1] [--repeats 3]

Prints one JSON line per route with median TTFT (first content byte) and TPOT
((end - first token) / (completion tokens - 1)), from temperature-0 chat requests with ignore_eos,
so every run produces the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import openai


def one(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> tuple[float, float, str]:
    start = time.perf_counter()
    first = None
    usage = None
    served_by = ""
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ) as response:
        served_by = response.headers.get("x-served-by", "")
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage:
                usage = chunk.usage
    end = time.perf_counter()
    return first - start, (end - first) / max(1, usage.completion_tokens - 1), served_by


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--routes", nargs="+", default=["cheap", "strong", "auto"])
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", timeout=300)
    one(client, args.routes[0], args.prompt, 4)  # warm-up
    for route in args.routes:
        runs = [one(client, route, args.prompt, args.max_tokens) for _ in range(args.repeats)]
        print(json.dumps({
            "route": route, "served_by": runs[-1][2], "max_tokens": args.max_tokens, "repeats": args.repeats,
            "ttft_ms_median": round(1000 * statistics.median(r[0] for r in runs), 1),
            "tpot_ms_median": round(1000 * statistics.median(r[1] for r in runs), 1),
        }))


if __name__ == "__main__":
    main()
