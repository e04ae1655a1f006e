"""Tools and structured outputs through every tier and cascade mode: valid answers, exact matches, escalations,
strong-tier seconds and TTFT on the structured eval set.

    .venv/bin/python -m scripts.eval_structured [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
        [--limit N] [--data scripts/data/structured_eval.jsonl] [--out bench-out/structured-eval.json]
        [--plot bench-out/structured-curve.png] [--summarize RESULT]

Needs a running app that takes per-request cascade settings (the evaluation overlay, as scripts/eval_cascade.py).
The set (scripts/data/structured_eval.jsonl, written for this project): `tool_choice` (the right tool among
several, `tool_choice: required`), `arguments` (the arguments of a named tool), `json_schema` (extraction
under `response_format`), each with a reference answer, and `auto` (tools offered, `tool_choice: auto`).
One request at a time, streamed, temperature 0, each prompt asked of `strong`, of `cheap` (with
log-probabilities), of `auto` in speculative mode at alpha 0 (which must equal `strong`), and of `auto` in
confidence mode at the profile's threshold.

Quality is exact match against the reference (the right tool, the right arguments, the right fields; strings
compared case-insensitively) where a grammar makes every answer valid by construction, and the valid-answer
rate (serve_app.routing.validity) for `auto`, where no grammar applies until a call starts. The confidence
cascade with the validity check is replayed offline at every threshold, as scripts/eval_cascade.py does
(an invalid cheap answer always escalates; threshold 0 is the validity check alone), and checked live at
the profile's threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from scripts.eval_cascade import replay
from scripts.eval_speculative import ask, speculation_totals
from serve_app.analysis.structured_eval import FORMAT_FIELDS, judged
from serve_app.config import AppConfig
from serve_app.core.stats import percentile
from serve_app.routing.scorers import SCORERS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "scripts" / "data" / "structured_eval.jsonl"


def _signature(answer: dict) -> tuple:
    """What a client gets, without the random tool-call ids."""
    return answer["text"], [(c["function"]["name"], c["function"]["arguments"]) for c in answer["tool_calls"]]


def evaluate(items: list[dict], http: httpx.Client, cheap: str, strong: str, scorer: str, max_tokens: int) -> list[dict]:
    score = SCORERS[scorer]
    asks = {"strong": (strong, {}), "cheap": (cheap, {"logprobs": True}),
            "speculative": ("auto", {"cascade": {"mode": "speculative", "alpha": 0.0}}),
            "confidence": ("auto", {"cascade": {"mode": "confidence"}})}
    rows = []
    for i, item in enumerate(items):
        fields = {k: item[k] for k in FORMAT_FIELDS if k in item}
        order = list(asks)[i % len(asks):] + list(asks)[:i % len(asks)]  # who fills the prefix cache rotates
        got = {key: ask(http, asks[key][0], item["prompt"], max_tokens, {**fields, **asks[key][1]}) for key in order}
        c, s, spec, conf = got["cheap"], got["strong"], got["speculative"], got["confidence"]
        cheap_judged, strong_judged = judged(item, c), judged(item, s)
        logprobs = [t["logprob"] for t in c["logprobs"]]
        confidence = score(logprobs) if logprobs else 0.0
        rows.append({
            "id": item["id"], "kind": item["kind"], "cheap_answer": _signature(c), "strong_answer": _signature(s),
            **{f"cheap_{k}": v for k, v in cheap_judged.items()}, **{f"strong_{k}": v for k, v in strong_judged.items()},
            "cheap_correct": cheap_judged["quality"], "strong_correct": strong_judged["quality"],
            # The cascade's verdict: an invalid answer escalates at any threshold.
            "confidence": confidence if cheap_judged["valid"] else -1.0, "cheap_confidence": confidence,
            "cheap_logprobs": [round(lp, 5) for lp in logprobs],
            "cheap_ttft_s": c["ttft_s"], "cheap_latency_s": c["latency_s"], "strong_ttft_s": s["ttft_s"],
            "strong_latency_s": s["latency_s"], "cheap_cost_usd": c["cost_usd"], "strong_cost_usd": s["cost_usd"],
            "cheap_seconds": c["replica_seconds"].get(cheap, 0.0), "strong_seconds": s["replica_seconds"].get(strong, 0.0),
            "speculative": {"equals_strong": _signature(spec) == _signature(s), "ttft_s": spec["ttft_s"],
                            "plan": spec["routing"].get("plan"), "strong_seconds": spec["replica_seconds"].get(strong, 0.0),
                            "speculation": spec["speculation"],
                            **judged(item, spec)},
            "confidence_live": {"served_by": conf["routing"].get("served_by"), "reason": conf["routing"].get("reason"),
                                "ttft_s": conf["ttft_s"], "latency_s": conf["latency_s"],
                                "strong_seconds": conf["replica_seconds"].get(strong, 0.0),
                                "cheap_seconds": conf["replica_seconds"].get(cheap, 0.0), **judged(item, conf)},
        })
        print(f"\r{i + 1}/{len(items)} prompts", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def _rates(rows: list[dict], prefix: str) -> dict:
    n = len(rows)
    return {"valid": sum(r[f"{prefix}_valid"] for r in rows) / n, "exact": sum(r[f"{prefix}_exact"] for r in rows) / n,
            "quality": sum(r[f"{prefix}_quality"] for r in rows) / n}


def _p50(values: list[float | None]) -> float | None:
    return percentile([v for v in values if v is not None], 50) if any(v is not None for v in values) else None


def _by_scorer(rows: list[dict]) -> dict[str, float | None]:
    """Per scorer of the cheap answer's log-probabilities (the validity check first, as the cascade runs it):
    the fewest strong-tier seconds (relative to `strong`) at which the cascade recovers 90 % of the gap."""
    found: dict[str, float | None] = {}
    for name, score in SCORERS.items():
        scores = [score(r["cheap_logprobs"]) if r["cheap_valid"] and r["cheap_logprobs"] else -1.0 for r in rows]
        curve = replay(rows, scores, verified=False)
        found[name] = min((p["strong_seconds_vs_strong_route"] for p in curve if p["pgr"] >= 0.9 - 1e-12), default=None)
    return found


def summarize(rows: list[dict], threshold: float) -> dict:
    """Per kind and over all: each tier's rates and TTFT, the speculative route against `strong`, the
    confidence cascade with the validity check (replayed at every threshold, and live)."""
    strong_total = sum(r["strong_seconds"] for r in rows)
    summary: dict[str, Any] = {"prompts": len(rows), "threshold": threshold, "by_kind": {}}
    for kind in ["all", *sorted({r["kind"] for r in rows})]:
        part = [r for r in rows if kind in ("all", r["kind"])]
        cheap_q, strong_q = (sum(r[f"{t}_quality"] for r in part) / len(part) for t in ("cheap", "strong"))
        live = [r["confidence_live"] for r in part]
        entry: dict[str, Any] = {
            "n": len(part), "quality": "valid answers" if kind == "auto" else "exact match" if kind != "all" else "mixed",
            "cheap": {**_rates(part, "cheap"), "ttft_p50_s": _p50([r["cheap_ttft_s"] for r in part])},
            "strong": {**_rates(part, "strong"), "ttft_p50_s": _p50([r["strong_ttft_s"] for r in part])},
            "speculative": {"equals_strong": sum(r["speculative"]["equals_strong"] for r in part),
                            "plans": sorted({r["speculative"]["plan"] for r in part}),
                            "served_from_drafts": speculation_totals([r["speculative"]["speculation"] for r in part])[1],
                            "strong_seconds_vs_strong_route": sum(r["speculative"]["strong_seconds"] for r in part)
                            / max(1e-9, sum(r["strong_seconds"] for r in part)),
                            "ttft_p50_s": _p50([r["speculative"]["ttft_s"] for r in part])},
            "confidence_live": {
                "quality": sum(x["quality"] for x in live) / len(part),
                "valid": sum(x["valid"] for x in live) / len(part),
                "escalated": sum(x["served_by"] == "strong" for x in live) / len(part),
                "escalated_invalid": sum((x["reason"] or "").startswith("invalid_") for x in live) / len(part),
                "strong_seconds_vs_strong_route": sum(x["strong_seconds"] for x in live)
                / max(1e-9, sum(r["strong_seconds"] for r in part)),
                "ttft_p50_s": _p50([x["ttft_s"] for x in live])},
        }
        if strong_q > cheap_q:
            curve = replay(part, [r["confidence"] for r in part], verified=False)
            at = replay(part, [r["confidence"] for r in part], verified=False, at=[threshold])[0]
            recovering = [p for p in curve if p["pgr"] >= 0.9 - 1e-12]
            entry["strong_seconds_to_recover_90pct_by_scorer"] = _by_scorer(part)
            entry["confidence_replayed"] = {
                "validity_only": curve[0], "at_profile_threshold": at,
                "cheapest_recovering_90pct": min(recovering, key=lambda p: (p["strong_seconds_vs_strong_route"],
                                                                           p["threshold"])) if recovering else None,
                "curve": curve}
        summary["by_kind"][kind] = entry
    summary["strong_seconds_total"] = strong_total
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in summary["by_kind"] if k != "all"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 4.2), sharey=True)
    for ax, kind in zip(axes, kinds, strict=True):
        entry = summary["by_kind"][kind]
        cheap, strong = entry["cheap"]["quality"], entry["strong"]["quality"]
        ax.plot([0, 1], [cheap, strong], "--", color="grey", label="random routing")
        ax.plot(0, cheap, "o", label="cheap")
        ax.plot(1, strong, "o", label="strong")
        if replayed := entry.get("confidence_replayed"):
            curve = sorted(replayed["curve"], key=lambda p: p["strong_seconds_vs_strong_route"])
            ax.plot([p["strong_seconds_vs_strong_route"] for p in curve], [p["accuracy"] for p in curve],
                    label="confidence + validity check")
        live = entry["confidence_live"]
        ax.plot(live["strong_seconds_vs_strong_route"], live["quality"], "x", markersize=9, label="confidence, live")
        speculative = entry["speculative"]
        if any(plan.startswith("speculative") for plan in speculative["plans"]):
            ax.plot(speculative["strong_seconds_vs_strong_route"], entry["strong"]["quality"], "^", markersize=8,
                    label="speculative (alpha 0)")
        ax.set(title=f"{kind} ({entry['n']}, {entry['quality']})", xlabel="strong-tier seconds (1 = strong route)")
    axes[0].set_ylabel("quality")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, help="every k-th prompt so that about this many are asked")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/structured-eval.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench-out/structured-curve.png")
    parser.add_argument("--summarize", type=Path, metavar="RESULT", help="summarize an earlier result again")
    args = parser.parse_args()
    config = AppConfig.from_serve_file(args.config)
    command = "python -m scripts.eval_structured " + " ".join(sys.argv[1:])
    if args.summarize:
        earlier = json.loads(args.summarize.read_text())
        rows, command = earlier["rows"], earlier["command"]
    else:
        items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
        if args.limit:
            items = items[::max(1, len(items) // args.limit)]
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.Client(base_url=args.base_url, headers=headers, timeout=600) as http:
            rows = evaluate(items, http, config.cascade.cheap_tier, config.cascade.strong_tier, config.cascade.scorer,
                            args.max_tokens)
    summary = summarize(rows, config.cascade.threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "summary": summary, "rows": rows}, indent=1) + "\n")
    plot(summary, args.plot)
    for kind, entry in summary["by_kind"].items():
        replayed = entry.get("confidence_replayed") or {}
        best = replayed.get("cheapest_recovering_90pct")
        live = entry["confidence_live"]
        recovered = f"90 % of the gap at {best['strong_seconds_vs_strong_route']:.2f}x" if best else "no 90 % point"
        print(f"{kind:12s} n={entry['n']:3d} cheap {entry['cheap']['quality']:.2f} strong {entry['strong']['quality']:.2f}"
              f" | confidence live {live['quality']:.2f} at {live['strong_seconds_vs_strong_route']:.2f}x | {recovered}")
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
