"""A short run of the side-by-side serving benchmark (scripts/bench_serving.py) against the real stack:
this app's `strong` route and vLLM's own OpenAI server on the same model (the stack's external API),
through vLLM's benchmark client. Checks the result files' structure, never the timings."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from scripts.harness.cluster import BIN, ROOT

pytestmark = pytest.mark.e2e


def test_benchmark_command_writes_rows_overhead_csv_and_plot(stack, tmp_path):
    out = tmp_path / "serving.json"
    command = [BIN / "python", "-m", "scripts.bench_serving", "--systems", "app,vllm", "--routes", "strong",
               "--app-url", stack.http_url, "--vllm-url", stack.external.base_url.removesuffix("/v1"),
               "--concurrency", "2", "--rounds", "1", "--min-prompts", "2", "--input-len", "32", "--output-len", "8",
               "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": stack.api_key},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["load"]["input_len"] == 32 and report["slo"] == {"ttft_ms": 2000, "tpot_ms": 250}
    rows = {(r["system"], r["route"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("app", "strong", 2), ("vllm", "strong", 2)}
    for row in rows.values():
        assert (row["requests"], row["completed"], row["failed"]) == (2, 2, 0), row
        assert row["output_throughput"] > 0 and row["request_throughput"] > 0
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p99"]
        assert 0 < row["tpot_ms_p50"] <= row["tpot_ms_p99"]
        assert row["goodput_rps"] <= row["request_throughput"]
        # Ours and vLLM's client's own arithmetic agree on the same requests.
        assert row["output_throughput"] == pytest.approx(row["vllm_client"]["output_throughput"], rel=1e-3)
        assert row["ttft_ms_p50"] == pytest.approx(row["vllm_client"]["median_ttft_ms"], abs=0.02)
    (line,) = report["overhead"]
    assert line["concurrency"] == 2 and line["throughput_vs_direct"] > 0 and "ttft_p50_delta_ms" in line

    with open(out.with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert [(r["system"], r["route"]) for r in table] == [("app", "strong"), ("vllm", "strong")]
    assert {"output_throughput", "ttft_ms_p50", "tpot_ms_p99", "goodput_rps"} <= set(table[0])
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out.with_suffix("").iterdir()) == ["app-strong-c2.json", "vllm-strong-c2.json"]
