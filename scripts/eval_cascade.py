"""Every cascade mode on the same eval prompts: quality recovered per strong-tier second, against random routing.

    .venv/bin/python -m scripts.eval_cascade [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
        [--limit N] [--alphas 0] [--data scripts/data/cascade_eval.jsonl]
        [--out bench-out/cascade-eval.json] [--plot bench-out/cascade-curve.png] [--summarize RESULT] [--compact]

Needs a running app that takes per-request cascade settings: a profile with the evaluation overlay
(`python -m scripts.overlay configs/local-cpu.yaml configs/overlays/evaluation.yaml --out bench-out/eval.yaml`,
then `scripts/serve.sh bench-out/eval.yaml`). One request at a time (so that latencies are those of one stream), streamed,
at temperature 0, every prompt of the eval set (short facts, arithmetic, sentiment, simple
instructions) is asked, each prompt starting with another of them (the first to ask fills the engines'
prefix caches for the others):

- of the `strong` route, and of the `cheap` route with log-probabilities;
- of `auto` in `verified` mode with threshold 0 (never escalating): the strong tier's verdict on the
  cheap answer, every verifier's score of it, and what the verification pass cost;
- of `auto` in `speculative` mode, once per `--alphas`.

The threshold modes are then replayed exactly offline (serve_app.analysis.cascade_eval): at threshold t
a prompt escalates when its score is below t, and pays the cheap answer (and, verified, the
verification), then the strong answer; its time to first token is the buffered cheap answer's latency
(plus the verification's), plus the strong answer's TTFT when it escalates. `confidence` uses the
profile's scorer (`cascade.scorer`), `learned` the cross-validated scores of the fitted rule
(serve_app.analysis.deferral), `verified` the best verifier on this sample. For each mode: accuracy,
share of the quality gap recovered (PGR), APGR and the strong share to recover 50 % / 80 % of the gap
where a threshold sweeps, TTFT p50 and latency p50 at one stream, the strong tier's replica-seconds per
request relative to sending every prompt to `strong`, and cost. Writes a JSON result (per-prompt answers
included; the input of scripts/calibrate_cascade.py) and a PNG plot of accuracy against strong-tier
seconds with the random-routing line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from scripts.eval_speculative import ask, speculation_totals
from scripts.harness.eval_data import EVAL_DATA, eval_items
from serve_app.analysis import cascade_eval
from serve_app.analysis.cascade_eval import Answered
from serve_app.analysis.deferral import learn
from serve_app.config import AppConfig
from serve_app.core.stats import percentile
from serve_app.routing.scorers import SCORERS, VERIFIERS

ROOT = Path(__file__).resolve().parents[1]


def evaluate(items: list[dict], http: httpx.Client, cheap: str, strong: str, scorer: str, max_tokens: int,
             alphas: list[float]) -> list[dict]:
    score = SCORERS[scorer]
    asks = {"strong": (strong, {}), "cheap": (cheap, {"logprobs": True}),
            "verified": ("auto", {"cascade": {"mode": "verified", "threshold": 0.0}})} | {
        f"speculative@{a:g}": ("auto", {"cascade": {"mode": "speculative", "alpha": a}}) for a in alphas}
    rows = []
    for i, item in enumerate(items):
        order = list(asks)[i % len(asks):] + list(asks)[:i % len(asks)]
        got = {key: ask(http, asks[key][0], item["prompt"], max_tokens, asks[key][1]) for key in order}
        c, s, v = got["cheap"], got["strong"], got["verified"]
        logprobs = [t["logprob"] for t in c["logprobs"]]
        rows.append({
            **item, "cheap": c["text"], "strong": s["text"], "cheap_logprobs": logprobs,
            "confidence": score(logprobs) if logprobs else 0.0,
            "cheap_correct": cascade_eval.correct(item["check"], c["text"], item["answer"]),
            "strong_correct": cascade_eval.correct(item["check"], s["text"], item["answer"]),
            "cheap_latency_s": c["latency_s"], "strong_latency_s": s["latency_s"], "strong_ttft_s": s["ttft_s"],
            "cheap_ttft_s": c["ttft_s"],
            "cheap_cost_usd": c["cost_usd"], "strong_cost_usd": s["cost_usd"],
            "cheap_seconds": c["replica_seconds"].get(cheap, 0.0), "strong_seconds": s["replica_seconds"].get(strong, 0.0),
            "verification": v["routing"].get("verification") or {}, "verified_latency_s": v["latency_s"],
            "verify_seconds": v["replica_seconds"].get(strong, 0.0),
            "verified_cheap_seconds": v["replica_seconds"].get(cheap, 0.0),
            "verified_cost_usd": v["cost_usd"], "verified_served": v["text"] == c["text"],
            "speculative": {key.split("@")[1]: {
                "text": got[key]["text"], "correct": cascade_eval.correct(item["check"], got[key]["text"], item["answer"]),
                "ttft_s": got[key]["ttft_s"], "latency_s": got[key]["latency_s"], "cost_usd": got[key]["cost_usd"],
                "strong_seconds": got[key]["replica_seconds"].get(strong, 0.0),
                "cheap_seconds": got[key]["replica_seconds"].get(cheap, 0.0),
                "speculation": got[key]["speculation"], "equals_strong": got[key]["text"] == s["text"]}
                for key in got if key.startswith("speculative@")},
        })
        print(f"\r{i + 1}/{len(items)} prompts", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def answered(rows: list[dict]) -> list[Answered]:
    return [Answered(**{f: row[f] for f in Answered.__dataclass_fields__}) for row in rows]


def rescored(rows: list[dict], scorer: str) -> list[Answered]:
    """The same answers judged by another scorer's confidence: which scorer separates them best."""
    score = SCORERS[scorer]
    return [Answered(**{**{f: row[f] for f in Answered.__dataclass_fields__},
                        "confidence": score(row["cheap_logprobs"]) if row["cheap_logprobs"] else 0.0})
            for row in rows]


def replay(rows: list[dict], scores: list[float], verified: bool, at: list[float] | None = None) -> list[dict]:
    """A threshold mode at every threshold that changes it (or at the thresholds `at`): what each point costs
    and serves."""
    strong_total = sum(r["strong_seconds"] for r in rows)
    cheap_acc, strong_acc = cascade_eval.accuracies(answered(rows))
    base = [r["verified_latency_s"] if verified else r["cheap_latency_s"] for r in rows]  # before a decision
    points = []
    for threshold in at or cascade_eval.thresholds([Answered(s, False, False) for s in scores]):
        up = [s < threshold for s in scores]
        accuracy = sum(r["strong_correct"] if e else r["cheap_correct"] for r, e in zip(rows, up, strict=True)) / len(rows)
        points.append({
            "threshold": threshold, "accuracy": accuracy, "pgr": cascade_eval.pgr(accuracy, cheap_acc, strong_acc),
            "strong_share": sum(up) / len(rows),
            "strong_seconds_vs_strong_route": sum((r["verify_seconds"] if verified else 0.0)
                                                  + (r["strong_seconds"] if e else 0.0)
                                                  for r, e in zip(rows, up, strict=True)) / strong_total,
            "ttft_p50_s": percentile([b + (r["strong_ttft_s"] if e else 0.0)
                                      for r, e, b in zip(rows, up, base, strict=True)], 50),
            "latency_p50_s": percentile([b + (r["strong_latency_s"] if e else 0.0)
                                         for r, e, b in zip(rows, up, base, strict=True)], 50),
            "mean_cost_usd": sum((r["verified_cost_usd"] if verified else r["cheap_cost_usd"])
                                 + (r["strong_cost_usd"] if e else 0.0) for r, e in zip(rows, up, strict=True)) / len(rows),
        })
    return points


def threshold_mode(rows: list[dict], scores: list[float], verified: bool) -> dict:
    curve = replay(rows, scores, verified)
    as_points = [cascade_eval.Point(p["threshold"], p["accuracy"], p["strong_share"], p["pgr"], 0.0, 0.0) for p in curve]
    recover80 = min((p for p in curve if p["pgr"] >= 0.8 - 1e-12),
                    key=lambda p: (p["strong_seconds_vs_strong_route"], p["threshold"]))
    return {"apgr": round(cascade_eval.apgr(as_points), 4),
            "strong_share_to_recover_50pct": cascade_eval.calls_to_recover(as_points, 0.5),
            "strong_share_to_recover_80pct": cascade_eval.calls_to_recover(as_points, 0.8),
            "at_80pct_recovered": recover80, "curve": curve}


def speculative_mode(rows: list[dict], alpha: str) -> dict:
    answers = [r["speculative"][alpha] for r in rows]
    cheap_acc, strong_acc = cascade_eval.accuracies(answered(rows))
    accuracy = sum(a["correct"] for a in answers) / len(rows)
    totals, from_drafts = speculation_totals([a["speculation"] for a in answers])
    return {"alpha": float(alpha), "accuracy": accuracy, "pgr": cascade_eval.pgr(accuracy, cheap_acc, strong_acc),
            "strong_seconds_vs_strong_route": sum(a["strong_seconds"] for a in answers)
            / sum(r["strong_seconds"] for r in rows),
            "cheap_seconds_vs_cheap_route": sum(a["cheap_seconds"] for a in answers) / sum(r["cheap_seconds"] for r in rows),
            "ttft_p50_s": percentile([a["ttft_s"] for a in answers if a["ttft_s"] is not None], 50),
            "latency_p50_s": percentile([a["latency_s"] for a in answers], 50),
            "mean_cost_usd": sum(a["cost_usd"] for a in answers) / len(rows),
            "equals_strong": sum(a["equals_strong"] for a in answers), "speculation": totals,
            "served_from_drafts": from_drafts}


def summarize(rows: list[dict], scorer: str) -> dict:
    results = answered(rows)
    cheap_acc, strong_acc = cascade_eval.accuracies(results)
    learned = learn(rows)
    verifier_apgr = {name: round(cascade_eval.apgr(cascade_eval.sweep(
        [Answered(r["verification"].get(name, 0.0), r["cheap_correct"], r["strong_correct"]) for r in rows])), 4)
        for name in VERIFIERS}
    best_verifier = max(verifier_apgr, key=verifier_apgr.get)
    one_stream = {"ttft_p50_s": percentile([r["strong_ttft_s"] for r in rows], 50),
                  "latency_p50_s": percentile([r["strong_latency_s"] for r in rows], 50)}
    modes = {
        "strong": {"accuracy": strong_acc, "pgr": 1.0, "strong_seconds_vs_strong_route": 1.0, **one_stream,
                   "mean_cost_usd": sum(r["strong_cost_usd"] for r in rows) / len(rows)},
        "cheap": {"accuracy": cheap_acc, "pgr": 0.0, "strong_seconds_vs_strong_route": 0.0,
                  "ttft_p50_s": percentile([r["cheap_ttft_s"] for r in rows if r["cheap_ttft_s"] is not None], 50),
                  "latency_p50_s": percentile([r["cheap_latency_s"] for r in rows], 50),
                  "mean_cost_usd": sum(r["cheap_cost_usd"] for r in rows) / len(rows)},
        f"confidence ({scorer})": threshold_mode(rows, [r["confidence"] for r in rows], verified=False),
        "learned (cross-validated)": threshold_mode(rows, [a.confidence for a in learned.out_of_fold], verified=False),
        f"verified ({best_verifier})": threshold_mode(rows, [r["verification"].get(best_verifier, 0.0) for r in rows],
                                                      verified=True),
    } | {f"speculative (alpha {a})": speculative_mode(rows, a) for a in rows[0]["speculative"]}
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        kind = by_kind.setdefault(row["kind"], {"n": 0, "cheap": 0, "strong": 0})
        kind["n"] += 1
        kind["cheap"] += row["cheap_correct"]
        kind["strong"] += row["strong_correct"]
    return {
        "prompts": len(rows), "cheap_accuracy": cheap_acc, "strong_accuracy": strong_acc, "by_kind": by_kind,
        "random_apgr": 0.5,
        "apgr_by_scorer": {name: round(cascade_eval.apgr(cascade_eval.sweep(rescored(rows, name))), 4) for name in SCORERS}
        | {"learned (5-fold cross-validated)": round(learned.cv_apgr, 4)},
        "apgr_by_verifier": verifier_apgr, "modes": modes,
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    modes = summary["modes"]
    ax.plot([0, 1], [summary["cheap_accuracy"], summary["strong_accuracy"]], "--", color="grey", label="random routing")
    for name, mode in modes.items():
        if "curve" in mode:
            curve = sorted(mode["curve"], key=lambda p: (p["strong_seconds_vs_strong_route"], -p["accuracy"]))
            ax.plot([p["strong_seconds_vs_strong_route"] for p in curve], [p["accuracy"] for p in curve],
                    label=f"{name}, APGR {mode['apgr']:.2f}")
        else:
            ax.plot(mode["strong_seconds_vs_strong_route"], mode["accuracy"], "o", markersize=7,
                    label=name if name in ("strong", "cheap") else f"{name}: TTFT p50 {mode['ttft_p50_s']:.2f} s")
    ax.set(xlabel="strong-tier replica-seconds per request (1 = every prompt on strong)", ylabel="accuracy",
           title=f"Cascade modes on {summary['prompts']} eval prompts (one stream)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(summary: dict) -> str:
    """The modes side by side, threshold modes at their cheapest point recovering 80 % of the gap."""
    def seconds(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f} s"

    lines = ["| mode | accuracy | gap recovered | strong-tier seconds (vs strong) | TTFT p50 | latency p50 "
             "| cost / request | APGR |", "|---|---|---|---|---|---|---|---|"]
    for name, mode in summary["modes"].items():
        p = mode.get("at_80pct_recovered", mode)
        apgr = f"{mode['apgr']:.3f}" if "apgr" in mode else "—"
        lines.append(f"| {name} | {p['accuracy']:.3f} | {p['pgr']:.2f} | {p['strong_seconds_vs_strong_route']:.2f}× "
                     f"| {seconds(p['ttft_p50_s'])} | {seconds(p['latency_p50_s'])} "
                     f"| {p['mean_cost_usd'] * 1e6:.1f} µUSD | {apgr} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml",
                        help="the deployed profile: its cascade tiers and scorer")
    parser.add_argument("--data", type=Path, default=EVAL_DATA)
    parser.add_argument("--limit", type=int, help="every k-th prompt so that about this many are asked")
    parser.add_argument("--alphas", default="0", help="comma-separated alphas of the speculative mode")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/cascade-eval.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench-out/cascade-curve.png")
    parser.add_argument("--summarize", type=Path, metavar="RESULT",
                        help="summarize and plot the answers of an earlier result file again, asking nothing")
    parser.add_argument("--compact", action="store_true",
                        help="a result small enough to commit: no curves, answer texts cut, times to 5 decimals "
                             "(costs are never rounded)")
    args = parser.parse_args()

    config = AppConfig.from_serve_file(args.config)
    if args.summarize:
        earlier = json.loads(args.summarize.read_text())
        provenance = {key: earlier[key] for key in ("command", "note") if key in earlier}
        return write(earlier["answers"], config.cascade.scorer, args.max_tokens, args.out, args.plot, args.compact,
                     provenance)
    items = eval_items(args.data)
    if args.limit and args.limit < len(items):
        items = items[::-(-len(items) // args.limit)]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=600) as http:
        rows = evaluate(items, http, config.cascade.cheap_tier, config.cascade.strong_tier, config.cascade.scorer,
                        args.max_tokens, [float(a) for a in args.alphas.split(",")])
    write(rows, config.cascade.scorer, args.max_tokens, args.out, args.plot, args.compact)


def compacted(value, key: str = ""):
    """A result cut to what a committed file needs: no threshold curves, answer texts of at most 80
    characters, other floats to 5 decimals; a cost (any key naming `cost`) exactly as measured."""
    if isinstance(value, dict):
        return {k: compacted(v, k) for k, v in value.items() if k != "curve"}
    if isinstance(value, list):
        return [compacted(v, key) for v in value]
    if isinstance(value, float) and "cost" not in key:
        return round(value, 5)
    if isinstance(value, str) and key in ("cheap", "strong", "text"):
        return value[:80]
    return value


def write(rows: list[dict], scorer: str, max_tokens: int, out: Path, plot_path: Path, compact: bool = False,
          provenance: dict | None = None) -> None:
    """The result (with `provenance`, the command and notes of the run that asked, when summarizing again)."""
    summary = summarize(rows, scorer)
    result = {**(provenance or {}), "scorer": scorer, "max_tokens": max_tokens, **summary, "answers": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(compacted(result)) if compact else json.dumps(result, indent=1))
    plot(summary, plot_path)
    print(json.dumps({k: v for k, v in summary.items() if k != "modes"}, indent=1))
    print(table(summary))
    print(f"wrote {out} and {plot_path}")


if __name__ == "__main__":
    main()
