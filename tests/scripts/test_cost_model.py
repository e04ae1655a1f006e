"""scripts/cost_model.py as a user runs it: a benchmark file in, the break-even figures and a plot out."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tool_reads_a_benchmark_file_and_draws_the_plot(tmp_path):
    bench = tmp_path / "overload.json"
    bench.write_text(json.dumps({"sustainable_rps": 25.0, "max_tokens": 200}))  # 5000 tok/s
    plot, out = tmp_path / "cost.png", tmp_path / "cost.json"
    subprocess.run([
        sys.executable, "-m", "scripts.cost_model",
        "--requests-per-day", "100000", "--input-tokens", "500", "--output-tokens", "200", "--peak-factor", "2",
        "--api-input-per-mtok", "0.15", "--api-output-per-mtok", "0.60", "--hourly-usd", "2",
        "--throughput-from", str(bench), "--utilization", "0.5", "--plot", str(plot), "--json", str(out),
    ], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["break_even_requests_per_day"] == result["first_cheaper_requests_per_day"] == 246_154
    assert result["self_hosted"] == {"replicas": 1, "requests_per_day_per_replica": 540_000, "monthly_usd": 1460.0,
                                     "output_tokens_per_usd_at_full_use": 9_000_000}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
