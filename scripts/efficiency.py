"""MBU and MFU per tier on this machine: probe peak memory bandwidth and FLOP/s, time decoding, divide.

    .venv/bin/python -m scripts.efficiency [--base-url http://127.0.0.1:8000/v1] [--config configs/local-cpu.yaml]
        [--out bench-out/efficiency.json]

Run it against an idle service (e.g. `scripts/serve.sh` in another shell): it first probes the
machine (multi-threaded array copy for bandwidth, a float32 matrix product for FLOP/s; best of
several runs), then times single-stream decoding per tier (`scripts/request_latency.py`) and applies
serve_app/observability/efficiency.py with each tier's model shape (its config.json and manifest.json) and dtype.
Batch 1, so weights dominate the bytes read and the figures are an upper-bound-friendly case.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import openai

from scripts.request_latency import one
from serve_app.config import AppConfig
from serve_app.observability.efficiency import ModelShape, bytes_per_step, mbu, mfu, probe_bandwidth, probe_flops

ROOT = Path(__file__).resolve().parents[1]


def tier_shape(tier) -> ModelShape:
    folder = Path(tier.model.resolved())
    config = json.loads((folder / "config.json").read_text())
    parameters = json.loads((folder / "manifest.json").read_text())["parameters"]
    dtype = tier.engine.args.get("dtype", config.get("dtype", "bfloat16"))
    return ModelShape.from_hf_config(config, parameters, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "efficiency.json")
    args = parser.parse_args()

    app = AppConfig.from_serve_file(args.config)
    peak_bw, peak_flops = probe_bandwidth(), probe_flops()
    result = {"command": f"python -m scripts.efficiency --max-tokens {args.max_tokens} --repeats {args.repeats}",
              "peak_memory_gb_s": round(peak_bw / 1e9, 2), "peak_gflops": round(peak_flops / 1e9, 1), "tiers": []}
    print(json.dumps({k: v for k, v in result.items() if k != "tiers"}))
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=300)
    prompt = "What is the capital of France?"
    one(client, next(iter(app.tiers)), prompt, 4)  # warm-up
    for name, tier in app.tiers.items():
        shape = tier_shape(tier)
        tpot = sorted(one(client, name, prompt, args.max_tokens)[1] for _ in range(args.repeats))[args.repeats // 2]
        context = 40 + args.max_tokens // 2  # chat-templated prompt plus half the answer, on average
        result["tiers"].append({
            "tier": name, "parameters": shape.parameters, "weight_gb": round(shape.weight_bytes / 1e9, 3),
            "bytes_per_step_gb": round(bytes_per_step(shape, 1, context) / 1e9, 3), "tpot_ms": round(1000 * tpot, 1),
            "achieved_gb_s": round(bytes_per_step(shape, 1, context) / tpot / 1e9, 2),
            "mbu": round(mbu(shape, tpot, peak_bw, 1, context), 3), "mfu": round(mfu(shape, tpot, peak_flops), 4),
        })
        print(json.dumps(result["tiers"][-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
