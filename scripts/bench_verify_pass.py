"""What a speculative verification pass costs the strong engine, against a decode step: vLLM alone, in
this process, with the local profile's engine settings (no Ray, no router, no other tier).

    .venv/bin/python -m scripts.bench_verify_pass [--prompts 20] [--draft 8] [--out docs/results/verify-pass.json]

Per eval prompt (every k-th): the strong model's greedy answer (its time per output token), then, as
the speculative cascade asks it, with the prefix cache warm from that answer:
- `generate_1`: one token after prompt + the first 8 answer tokens (a generation, no log-probabilities);
- `score`: a scoring pass, one prefill over prompt + those 8 served tokens + `--draft` tokens the engine
  has not seen there (later answer tokens: the values do not change the cost) with prompt
  log-probabilities, and one token after them (deployments/engine_outputs.score's request);
- `score_without_logprobs`: the same over other unseen tokens, without prompt log-probabilities.
Each timed call reports the prompt tokens vLLM computed (not read from its prefix cache). The pass's cost
in decode steps is what decides how many strong-tier seconds the speculative cascade saves
(docs/cascade.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from scripts.harness.cluster import app_args, load_profile
from scripts.harness.eval_data import eval_items

ROOT = Path(__file__).resolve().parents[1]
SERVED = 8


async def measure(model: str, engine_kwargs: dict, prompts: list[str], draft: int) -> dict:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **engine_kwargs))
    tokenizer = engine.get_tokenizer()
    calls = 0

    async def timed(ids: list[int], **params) -> tuple[float, int, object]:
        nonlocal calls
        calls += 1
        started = time.perf_counter()
        async for output in engine.generate({"prompt_token_ids": ids}, SamplingParams(  # noqa: B007
                temperature=0, output_kind=RequestOutputKind.FINAL_ONLY, **params), f"pass-{calls}"):
            pass
        return time.perf_counter() - started, len(ids) - (output.num_cached_tokens or 0), output

    rows = []
    try:
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = tokenizer.encode(text, add_special_tokens=False)
            await timed(ids, max_tokens=1)  # the opening token: the prompt is in the prefix cache from here on
            length = SERVED + 3 * draft
            seconds, _, output = await timed(ids, max_tokens=length, ignore_eos=True)
            answer = list(output.outputs[0].token_ids)
            served = answer[:SERVED]
            unseen = [answer[SERVED + draft:SERVED + 2 * draft], answer[SERVED + 2 * draft:]]  # not at that position
            row = {"prompt_tokens": len(ids), "decode_step_s": seconds / length}
            for name, tail, extra in (
                    ("generate_1", [], {}),
                    ("score", unseen[0], {"prompt_logprobs": 1, "detokenize": False, "skip_reading_prefix_cache": False}),
                    ("score_without_logprobs", unseen[1], {"detokenize": False})):
                seconds, computed, _ = await timed(ids + served + tail, max_tokens=1, **extra)
                row[name] = {"s": seconds, "computed_tokens": computed}
            rows.append(row)
    finally:
        engine.shutdown()
    return summarize(rows, draft)


def summarize(rows: list[dict], draft: int) -> dict:
    step = statistics.median(r["decode_step_s"] for r in rows)
    summary = {"prompts": len(rows), "draft_tokens": draft, "decode_step_s": round(step, 4)}
    for name in ("generate_1", "score", "score_without_logprobs"):
        seconds = statistics.median(r[name]["s"] for r in rows)
        summary[name] = {"median_s": round(seconds, 4), "decode_steps": round(seconds / step, 2),
                         "computed_tokens_median": statistics.median(r[name]["computed_tokens"] for r in rows)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local-cpu.yaml")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--draft", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/verify-pass.json")
    args = parser.parse_args()
    from serve_app.config import AppConfig

    config = AppConfig.model_validate(app_args(load_profile(args.profile)))
    strong = config.tiers[config.cascade.strong_tier]
    os.environ.update(strong.engine.env_vars)
    items = eval_items()
    prompts = [item["prompt"] for item in items[::max(1, len(items) // args.prompts)]][:args.prompts]
    summary = asyncio.run(measure(strong.model.resolved(), strong.engine.args, prompts, args.draft))
    summary["command"] = f"python -m scripts.bench_verify_pass --prompts {args.prompts} --draft {args.draft}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
