"""The cascade's cost-quality curve on an eval set with checkable answers, against random routing.

    .venv/bin/python -m scripts.eval_cascade [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
        [--data scripts/data/cascade_eval.jsonl] [--out bench-out/cascade-eval.json] [--plot docs/cascade-curve.png]

Asks every prompt of the eval set (short facts, arithmetic, sentiment, simple instructions) once of
the cheap route, with log-probabilities, and once of the strong route, at temperature 0, through a
running app. The cheap answer's confidence is the router's own scorer (the config's
`cascade.scorer`), so the cascade at any threshold can be replayed exactly offline
(serve_app.analysis.cascade_eval). Reports the accuracy of each tier, then for each threshold the accuracy,
share of strong calls, mean latency and cost. It also gives the RouteLLM figures: APGR, and the
strong-call share needed to recover 50 % and 80 % of the quality gap. Random routing at the same
strong-call share is the baseline, and the APGR every registered scorer would give on the same answers
says which separates them best. Writes a JSON result (per-prompt answers included; the input of
scripts/calibrate_cascade.py) and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx

from serve_app.analysis import cascade_eval
from serve_app.analysis.cascade_eval import Answered
from serve_app.analysis.deferral import learn
from serve_app.config import AppConfig
from serve_app.routing.scorers import SCORERS

ROOT = Path(__file__).resolve().parents[1]


def ask(http: httpx.Client, model: str, prompt: str, max_tokens: int, logprobs: bool) -> dict:
    started = time.perf_counter()
    response = http.post("/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "logprobs": logprobs})
    response.raise_for_status()
    body = response.json()
    choice = body["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    return {"text": choice["message"]["content"] or "", "logprobs": [t["logprob"] for t in content],
            "latency_s": time.perf_counter() - started, "cost_usd": body["usage"].get("cost_usd") or 0.0,
            "output_tokens": body["usage"]["completion_tokens"]}


def evaluate(items: list[dict], base_url: str, api_key: str | None, cheap: str, strong: str, scorer: str,
             max_tokens: int, concurrency: int) -> list[dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    score = SCORERS[scorer]

    def one(item: dict) -> dict:
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
            c = ask(http, cheap, item["prompt"], max_tokens, logprobs=True)
            s = ask(http, strong, item["prompt"], max_tokens, logprobs=False)
        return {**item, "cheap": c["text"], "strong": s["text"], "cheap_logprobs": c["logprobs"],
                "confidence": score(c["logprobs"]) if c["logprobs"] else 0.0,
                "cheap_correct": cascade_eval.correct(item["check"], c["text"], item["answer"]),
                "strong_correct": cascade_eval.correct(item["check"], s["text"], item["answer"]),
                "cheap_latency_s": c["latency_s"], "strong_latency_s": s["latency_s"],
                "cheap_cost_usd": c["cost_usd"], "strong_cost_usd": s["cost_usd"]}

    done = []
    with ThreadPoolExecutor(concurrency) as pool:
        for i, row in enumerate(pool.map(one, items), 1):
            done.append(row)
            print(f"\r{i}/{len(items)} answered", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return done


def answered(rows: list[dict]) -> list[Answered]:
    return [Answered(**{f: row[f] for f in Answered.__dataclass_fields__}) for row in rows]


def summarize(rows: list[dict]) -> dict:
    results = answered(rows)
    curve = cascade_eval.sweep(results)
    cheap, strong = cascade_eval.accuracies(results)
    by_kind = {}
    for row in rows:
        kind = by_kind.setdefault(row["kind"], {"n": 0, "cheap": 0, "strong": 0})
        kind["n"] += 1
        kind["cheap"] += row["cheap_correct"]
        kind["strong"] += row["strong_correct"]
    return {
        "prompts": len(rows), "cheap_accuracy": cheap, "strong_accuracy": strong, "by_kind": by_kind,
        "apgr": cascade_eval.apgr(curve), "random_apgr": 0.5,
        "strong_share_to_recover_50pct": cascade_eval.calls_to_recover(curve, 0.5),
        "strong_share_to_recover_80pct": cascade_eval.calls_to_recover(curve, 0.8),
        "apgr_by_scorer": {name: round(cascade_eval.apgr(cascade_eval.sweep(rescored(rows, name))), 4)
                           for name in SCORERS} | {"learned (5-fold cross-validated)": learn(rows)[0].cv_apgr},
        "curve": [{**asdict(p), "random_accuracy": cascade_eval.random_routing_accuracy(results, p.strong_share)}
                  for p in curve],
    }


def rescored(rows: list[dict], scorer: str) -> list[Answered]:
    """The same answers judged by another scorer's confidence: which scorer separates them best."""
    score = SCORERS[scorer]
    return [Answered(**{**{f: row[f] for f in Answered.__dataclass_fields__},
                        "confidence": score(row["cheap_logprobs"]) if row["cheap_logprobs"] else 0.0})
            for row in rows]


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted(summary["curve"], key=lambda p: (p["strong_share"], -p["accuracy"]))
    shares = [p["strong_share"] for p in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(shares, [p["accuracy"] for p in curve], label="cascade (threshold sweep)")
    left.plot([0, 1], [summary["cheap_accuracy"], summary["strong_accuracy"]], "--", label="random routing")
    left.set(xlabel="share of requests answered by the strong tier", ylabel="accuracy",
             title=f"Accuracy (APGR {summary['apgr']:.2f}; random 0.50)")
    left.legend()
    right.plot([p["mean_cost_usd"] * 1e6 for p in curve], [p["accuracy"] for p in curve], ".-")
    right.set(xlabel="mean cost per request (µUSD)", ylabel="accuracy", title="Cost against quality")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml",
                        help="the deployed profile: its cascade tiers and scorer")
    parser.add_argument("--data", type=Path, default=ROOT / "scripts/data/cascade_eval.jsonl")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/cascade-eval.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench-out/cascade-curve.png")
    args = parser.parse_args()

    config = AppConfig.from_serve_file(args.config)
    items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = evaluate(items, args.base_url, args.api_key, config.cascade.cheap_tier, config.cascade.strong_tier,
                    config.cascade.scorer, args.max_tokens, args.concurrency)
    summary = summarize(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scorer": config.cascade.scorer, "max_tokens": args.max_tokens, **summary,
                                    "answers": rows}, indent=1))
    plot(summary, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=1))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
