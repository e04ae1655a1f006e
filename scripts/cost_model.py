"""API versus self-hosting: monthly cost of a traffic profile each way, the break-even volume, a plot.

    .venv/bin/python -m scripts.cost_model --requests-per-day 200000 --input-tokens 500 --output-tokens 200 \
        --api-input-per-mtok 0.15 --api-output-per-mtok 0.60 --hourly-usd 2.5 --tokens-per-s 2500 \
        [--throughput-from bench-out/overload.json] [--plot docs/cost-break-even.png] [--json out.json]

Throughput is one replica's output tokens per second at its latency targets: given, or read from a
benchmark result file of this project (`sustainable_rps` x `max_tokens` of scripts/bench_overload.py).
The arithmetic lives in serve_app/analysis/cost.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve_app.analysis.cost import (
    ApiPrice,
    SelfHosted,
    Traffic,
    break_even_requests_per_day,
    first_cheaper_requests_per_day,
    monthly_api_cost,
    monthly_self_hosted_cost,
    output_tokens_per_usd,
)


def throughput_from(path: Path) -> float:
    """Output tokens per second of one replica, from a benchmark result file."""
    result = json.loads(path.read_text())
    if "sustainable_rps" in result and "max_tokens" in result:
        return result["sustainable_rps"] * result["max_tokens"]
    raise SystemExit(f"{path}: no throughput in it (expected sustainable_rps and max_tokens)")


def report(traffic: Traffic, price: ApiPrice, hosting: SelfHosted) -> dict:
    """Both monthly costs at this traffic; where self-hosting is first cheaper and from where it stays so."""
    first = first_cheaper_requests_per_day(traffic, price, hosting)
    break_even = break_even_requests_per_day(traffic, price, hosting)
    return {
        "traffic": {"requests_per_day": traffic.requests_per_day, "input_tokens": traffic.input_tokens,
                    "output_tokens": traffic.output_tokens, "peak_factor": traffic.peak_factor},
        "api": {"usd_per_request": price.per_request(traffic), "monthly_usd": round(monthly_api_cost(traffic, price), 2)},
        "self_hosted": {
            "replicas": hosting.replicas(traffic),
            "requests_per_day_per_replica": round(hosting.requests_per_day_per_replica(traffic)),
            "monthly_usd": round(monthly_self_hosted_cost(traffic, hosting), 2),
            "output_tokens_per_usd_at_full_use": round(
                output_tokens_per_usd(hosting.output_tokens_per_s, hosting.hourly_usd_per_replica)),
        },
        "first_cheaper_requests_per_day": None if first is None else round(first),
        "break_even_requests_per_day": None if break_even is None else round(break_even),
    }


def plot(traffic: Traffic, price: ApiPrice, hosting: SelfHosted, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    break_even = break_even_requests_per_day(traffic, price, hosting)
    top = max(traffic.requests_per_day, break_even or 0) * 4
    volumes = [top * i / 400 for i in range(1, 401)]
    scaled = [Traffic(v, traffic.input_tokens, traffic.output_tokens, traffic.peak_factor) for v in volumes]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(volumes, [monthly_api_cost(t, price) for t in scaled], label="API (per token)")
    ax.step(volumes, [monthly_self_hosted_cost(t, hosting) for t in scaled], where="post",
            label=f"self-hosted ({hosting.output_tokens_per_s:g} tok/s per replica at {hosting.utilization:.0%})")
    first = first_cheaper_requests_per_day(traffic, price, hosting)
    if first is not None and first != break_even:
        ax.axvline(first, color="grey", linestyle=":", linewidth=0.8, label=f"first cheaper {first:,.0f} req/day")
    if break_even is not None:
        ax.axvline(break_even, color="grey", linestyle="-.", label=f"cheaper from {break_even:,.0f} req/day on")
    ax.axvline(traffic.requests_per_day, color="black", linestyle="--", linewidth=0.8, label="this traffic")
    ax.set_xlabel(f"requests per day ({traffic.input_tokens:g} in / {traffic.output_tokens:g} out tokens, "
                  f"peak x{traffic.peak_factor:g})")
    ax.set_ylabel("USD per month")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-day", type=float, required=True)
    parser.add_argument("--input-tokens", type=float, required=True)
    parser.add_argument("--output-tokens", type=float, required=True)
    parser.add_argument("--peak-factor", type=float, default=2.0, help="peak-hour rate over the daily mean")
    parser.add_argument("--api-input-per-mtok", type=float, required=True, help="USD per million input tokens")
    parser.add_argument("--api-output-per-mtok", type=float, required=True, help="USD per million output tokens")
    parser.add_argument("--hourly-usd", type=float, required=True, help="USD per hour of one replica")
    parser.add_argument("--tokens-per-s", type=float, help="output tokens/s of one replica at its targets")
    parser.add_argument("--throughput-from", type=Path, help="take --tokens-per-s from a benchmark result file")
    parser.add_argument("--utilization", type=float, default=0.7, help="share of throughput planned at the peak")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--plot", type=Path, help="write the cost-against-volume plot here (PNG)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if (args.tokens_per_s is None) == (args.throughput_from is None):
        parser.error("give exactly one of --tokens-per-s and --throughput-from")
    tokens_per_s = args.tokens_per_s if args.tokens_per_s is not None else throughput_from(args.throughput_from)

    traffic = Traffic(args.requests_per_day, args.input_tokens, args.output_tokens, args.peak_factor)
    price = ApiPrice(args.api_input_per_mtok, args.api_output_per_mtok)
    hosting = SelfHosted(args.hourly_usd, tokens_per_s, args.utilization, args.min_replicas)
    result = report(traffic, price, hosting)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(traffic, price, hosting, args.plot)
    return result


if __name__ == "__main__":
    main()
