"""Serving benchmark arithmetic: percentiles, TPOT, goodput and the overhead of this app against a
baseline, from the per-request records of vLLM's benchmark client (`vllm.benchmarks.serve`).

Definitions follow vLLM's client so the figures compare with every published `vllm bench serve` run:
TTFT is the time to the first streamed choice; TPOT is a request's decode time over its output tokens
after the first, `(latency - ttft) / (output_tokens - 1)` (0 for one-token answers); a request is
good when it completed within both SLOs; percentiles interpolate linearly between ranks (numpy's
default). Failed requests count in the failed share and in no latency figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.core.stats import percentile


@dataclass(frozen=True)
class Slo:
    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True)
class RequestRecord:
    ttft_s: float
    latency_s: float
    output_tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def tpot_s(self) -> float:
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0

    def meets(self, slo: Slo) -> bool:
        return self.ok and self.ttft_s * 1e3 <= slo.ttft_ms and self.tpot_s * 1e3 <= slo.tpot_ms


def records(result: dict) -> list[RequestRecord]:
    """One record per request of a `vllm.benchmarks.serve` result (its per-request lists)."""
    columns = (result["ttfts"], result["latencies"], result["output_lens"], result["errors"])
    return [RequestRecord(ttft, latency, tokens or 0, error or "")
            for ttft, latency, tokens, error in zip(*columns, strict=True)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 2)


def summarize(requests: Sequence[RequestRecord], duration_s: float, slo: Slo) -> dict:
    """Throughput, latency percentiles and goodput of one load level."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    ok = [r for r in requests if r.ok]
    ttfts, tpots = [r.ttft_s for r in ok], [r.tpot_s for r in ok if r.output_tokens > 1]
    good = sum(r.meets(slo) for r in requests)
    return {
        "requests": len(requests), "completed": len(ok), "failed": len(requests) - len(ok),
        "duration_s": round(duration_s, 3),
        "request_throughput": round(len(ok) / duration_s, 4),
        "output_throughput": round(sum(r.output_tokens for r in ok) / duration_s, 3),
        "ttft_ms_p50": _ms(percentile(ttfts, 50)), "ttft_ms_p99": _ms(percentile(ttfts, 99)),
        "tpot_ms_p50": _ms(percentile(tpots, 50)), "tpot_ms_p99": _ms(percentile(tpots, 99)),
        "goodput_rps": round(good / duration_s, 4),
        "good_share": round(good / len(requests), 4) if requests else None,
    }


def overhead(rows: Sequence[dict], app: str = "app", route: str = "strong", baseline: str = "vllm",
             reference: str = "ray-llm") -> list[dict]:
    """Per concurrency: this app's `route` against the same model served directly (`baseline`) and by
    `reference`, as output-throughput ratios and the TTFT p50 difference. Rows need `system`, `route`,
    `concurrency` and the `summarize` figures; a level missing on either side is left out."""
    by_key = {(r["system"], r["route"], r["concurrency"]): r for r in rows}
    result = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        ours, direct = by_key.get((app, route, concurrency)), by_key.get((baseline, route, concurrency))
        if ours is None or direct is None:
            continue
        line = {"concurrency": concurrency, "route": route,
                "throughput_vs_direct": _ratio(ours["output_throughput"], direct["output_throughput"]),
                "ttft_p50_delta_ms": _difference(ours["ttft_ms_p50"], direct["ttft_ms_p50"]),
                "tpot_p50_delta_ms": _difference(ours["tpot_ms_p50"], direct["tpot_ms_p50"])}
        other = by_key.get((reference, route, concurrency))
        if other is not None:
            line["throughput_vs_reference"] = _ratio(ours["output_throughput"], other["output_throughput"])
            line["ttft_p50_delta_vs_reference_ms"] = _difference(ours["ttft_ms_p50"], other["ttft_ms_p50"])
        result.append(line)
    return result


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 4) if theirs else None


def _difference(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else round(ours - theirs, 2)
