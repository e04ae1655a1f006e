"""The speculative cascade against the strong and cheap tiers on the eval set: exactness, accuracy,
strong-tier replica-seconds, time to first token.

    .venv/bin/python -m scripts.eval_speculative [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
        [--limit N] [--alphas 0,0.3,0.6] [--draft-tokens 4[,8]] [--draft-stop-probs 0[,0.5]]
        [--out bench-out/speculative-eval.json]

Needs a running app that takes per-request cascade settings: a profile with the evaluation overlay
(`python -m scripts.overlay configs/local-cpu.yaml configs/overlays/evaluation.yaml --out bench-out/eval.yaml`,
then `scripts/serve.sh bench-out/eval.yaml`). One request at a time, streamed, at temperature 0: every prompt once on the
`strong` route (with its top-two log-probabilities), once on `cheap`, and once on `auto` in
speculative mode per alpha, draft length and draft stop probability (an A/B in one run), each prompt starting with another of them (whichever asks a prompt first
fills the engines' prefix caches for the others). Reports per mode the accuracy, the strong and cheap tiers' replica-seconds
(from each answer's usage) relative to sending every prompt to `strong`, TTFT and latency p50, cost;
and for alpha 0 how many answers equal the strong answer exactly, how many first differ at a near-tie
(top-two log-probabilities within `--tie` where a prefill and a decode step may rank them
differently), and which differ otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from scripts.harness.eval_data import EVAL_DATA, eval_items
from serve_app.analysis import cascade_eval
from serve_app.core.generation import assembled_tool_calls
from serve_app.core.stats import percentile

ROOT = Path(__file__).resolve().parents[1]


def ask(http: httpx.Client, model: str, prompt: str, max_tokens: int, extra: dict) -> dict:
    """One streamed chat answer: text, tool calls, TTFT, latency, usage (with replica-seconds), routing, logprobs."""
    started, first, text, logprobs, usage, routing, calls = time.perf_counter(), None, [], [], {}, {}, []
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
    with http.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            routing = chunk.get("routing") or routing
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                content, deltas = choice["delta"].get("content"), choice["delta"].get("tool_calls")
                if (content or deltas) and first is None:
                    first = time.perf_counter() - started
                text.append(content or "")
                calls += deltas or []
                logprobs += (choice.get("logprobs") or {}).get("content") or []
    return {"text": "".join(text), "tool_calls": assembled_tool_calls(calls), "ttft_s": first, "latency_s": time.perf_counter() - started,
            "replica_seconds": usage.get("replica_seconds") or {}, "cost_usd": usage.get("cost_usd") or 0.0,
            "completion_tokens": usage.get("completion_tokens"), "speculation": routing.get("speculation"),
            "routing": routing,
            "logprobs": [{"token": t["token"], "logprob": t["logprob"],
                          "top": sorted((x["logprob"] for x in t["top_logprobs"]), reverse=True)} for t in logprobs]}


def speculation_totals(speculations: list[dict | None]) -> tuple[dict[str, int], float]:
    """Answers' `routing.speculation` summed, and the share of the served tokens that came from drafts."""
    totals = {k: sum((s or {}).get(k, 0) for s in speculations)
              for k in ("drafted", "cut", "accepted", "replaced", "added", "passes")}
    return totals, round(totals["accepted"] / max(1, totals["accepted"] + totals["replaced"] + totals["added"]), 4)


def divergence(strong: dict, text: str, tie: float) -> str:
    """`exact`, `near_tie` (the strong answer's top two were within `tie` where `text` leaves it), or `differs`."""
    if text == strong["text"]:
        return "exact"
    served = ""
    for token in strong["logprobs"]:
        if not text.startswith(served + token["token"]):
            top = token["top"]
            return "near_tie" if len(top) > 1 and top[0] - top[1] < tie else "differs"
        served += token["token"]
    return "differs"


def variant(alpha: float, draft_tokens: int, stop_prob: float) -> tuple[str, dict]:
    """A speculative variant's name in the results, and the request's `cascade` settings."""
    return (f"speculative@{alpha:g}/{draft_tokens}" + (f"/stop{stop_prob:g}" if stop_prob else ""),
            {"mode": "speculative", "alpha": alpha, "draft_tokens": draft_tokens, "draft_stop_prob": stop_prob})


def summarize(rows: list[dict], variants: list[str], tie: float) -> dict:
    strong_s = sum(r["strong"]["replica_seconds"].get("strong", 0.0) for r in rows)

    def mode(key: str) -> dict:
        answers = [r[key] for r in rows]
        return {"accuracy": sum(a["correct"] for a in answers) / len(rows),
                "strong_seconds": round(sum(a["replica_seconds"].get("strong", 0.0) for a in answers), 3),
                "strong_seconds_vs_strong_route": round(sum(a["replica_seconds"].get("strong", 0.0) for a in answers)
                                                        / strong_s, 4) if strong_s else None,
                "cheap_seconds": round(sum(a["replica_seconds"].get("cheap", 0.0) for a in answers), 3),
                "ttft_p50_s": percentile([a["ttft_s"] for a in answers if a["ttft_s"] is not None], 50),
                "latency_p50_s": percentile([a["latency_s"] for a in answers], 50),
                "cost_usd": round(sum(a["cost_usd"] for a in answers), 9)}

    summary = {"prompts": len(rows), "strong": mode("strong"), "cheap": mode("cheap")}
    for key in variants:
        entry = mode(key)
        entry["speculation"], entry["served_from_drafts"] = speculation_totals([r[key]["speculation"] for r in rows])
        kinds = [divergence(r["strong"], r[key]["text"], tie) for r in rows]
        entry["versus_strong"] = {k: kinds.count(k) for k in ("exact", "near_tie", "differs")}
        entry["differs"] = [r["id"] for r, k in zip(rows, kinds, strict=True) if k == "differs"]
        summary[key] = entry
    summary["ttft_ratio_speculative_to_strong"] = (
        round(summary[variants[0]]["ttft_p50_s"] / summary["strong"]["ttft_p50_s"], 3)
        if variants and summary["strong"]["ttft_p50_s"] else None)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key")
    parser.add_argument("--data", type=Path, default=EVAL_DATA)
    parser.add_argument("--limit", type=int, help="every k-th prompt so that about this many are asked")
    parser.add_argument("--alphas", default="0", help="comma-separated alphas of the speculative mode")
    parser.add_argument("--draft-tokens", default="4", help="comma-separated draft lengths")
    parser.add_argument("--draft-stop-probs", default="0", help="comma-separated draft stop probabilities")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--tie", type=float, default=0.01, help="near-tie tolerance between top-two log-probabilities")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/speculative-eval.json")
    args = parser.parse_args()

    items = eval_items(args.data)
    if args.limit and args.limit < len(items):
        items = items[::-(-len(items) // args.limit)]
    alphas = [float(a) for a in args.alphas.split(",")]
    variants = dict(variant(a, int(g), float(p)) for a in alphas for g in args.draft_tokens.split(",")
                    for p in args.draft_stop_probs.split(","))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    rows = []
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=600) as http:
        for i, item in enumerate(items, 1):
            asks = {"strong": ("strong", {"logprobs": True, "top_logprobs": 2}), "cheap": ("cheap", {})} | {
                key: ("auto", {"cascade": cascade}) for key, cascade in variants.items()}
            # The first to ask a prompt fills the engines' prefix caches for the others: each prompt
            # starts with another mode, so that no mode is always the one that pays.
            order = list(asks)[i % len(asks):] + list(asks)[:i % len(asks)]
            row = {"id": item["id"], "kind": item["kind"]} | {
                key: ask(http, asks[key][0], item["prompt"], args.max_tokens, asks[key][1]) for key in order}
            for answer in row.values():
                if isinstance(answer, dict):
                    answer["correct"] = cascade_eval.correct(item["check"], answer["text"], item["answer"])
            rows.append(row)
            print(f"\r{i}/{len(items)} prompts", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    summary = summarize(rows, list(variants), args.tie)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_tokens": args.max_tokens, "draft_tokens": args.draft_tokens,
                                    "alphas": alphas, "draft_stop_probs": args.draft_stop_probs, **summary, "answers": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
