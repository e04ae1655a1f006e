"""scripts/eval_cascade.py as a user runs it, over synthetic answers (`--summarize`, asking nothing): every
mode on the same prompts, threshold modes replayed at every threshold with what each point pays, the
speculative points as measured, a table and a plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_app.analysis.test_deferral import rows as deferral_rows

ROOT = Path(__file__).resolve().parents[2]


def sample():
    """Half the cheap answers are wrong; the strong model's verdict separates them perfectly, the cheap
    model's mean probability does not. The strong answer is always right and takes 1 replica-second."""
    rows = []
    for row in deferral_rows():
        right = row["cheap_correct"]
        rows.append({**row, "kind": "fact", "cheap": "a", "strong": "b", "strong_ttft_s": 0.2, "cheap_ttft_s": 0.1,
                     "strong_seconds": 1.0, "cheap_seconds": 0.5, "verify_seconds": 0.25, "verified_latency_s": 0.7,
                     "verified_cost_usd": 1.5e-6,
                     "verification": {"accepted_share": 0.9 if right else 0.4, "accepted_prefix": 0.5,
                                      "strong_mean_prob": 0.5},
                     "speculative": {"0": {"text": "b", "correct": True, "ttft_s": 0.25, "latency_s": 2.0,
                                           "cost_usd": 3e-6, "strong_seconds": 0.5, "cheap_seconds": 0.6,
                                           "speculation": {"drafted": 8, "accepted": 4, "replaced": 2, "added": 2,
                                                           "passes": 3}, "equals_strong": True}}})
    return rows


def test_every_mode_is_reported_on_the_same_prompts(tmp_path):
    (tmp_path / "answers.json").write_text(json.dumps({"answers": sample()}))
    run = subprocess.run([sys.executable, "-m", "scripts.eval_cascade", "--summarize", str(tmp_path / "answers.json"),
                          "--out", str(tmp_path / "result.json"), "--plot", str(tmp_path / "plot.png")],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    summary = json.loads((tmp_path / "result.json").read_text())
    modes = summary["modes"]
    assert list(modes) == ["strong", "cheap", "confidence (mean_prob)", "learned (cross-validated)",
                           "verified (accepted_share)", "speculative (alpha 0)"]
    assert summary["apgr_by_verifier"]["accepted_share"] == pytest.approx(0.75)  # a perfect ranking: half are right
    assert summary["by_kind"] == {"fact": {"n": 120, "cheap": 60, "strong": 120}}
    verified = modes["verified (accepted_share)"]["at_80pct_recovered"]
    # escalating exactly the wrong half recovers the whole gap: every prompt pays its verification
    assert verified["pgr"] == 1.0 and verified["strong_share"] == 0.5
    assert verified["strong_seconds_vs_strong_route"] == pytest.approx(0.25 + 0.5)
    # half are served after the verification (0.7 s), half escalate (+ the strong TTFT): the median between
    assert verified["ttft_p50_s"] == pytest.approx((0.7 + 0.9) / 2)
    never = min(modes["confidence (mean_prob)"]["curve"], key=lambda p: p["threshold"])
    assert never["strong_share"] == 0 and never["strong_seconds_vs_strong_route"] == 0 and never["ttft_p50_s"] == 0.5
    speculative = modes["speculative (alpha 0)"]
    assert speculative["pgr"] == 1.0 and speculative["strong_seconds_vs_strong_route"] == 0.5
    assert speculative["equals_strong"] == 120 and speculative["served_from_drafts"] == 0.5
    assert summary["apgr_by_scorer"]["learned (5-fold cross-validated)"] > summary["apgr_by_scorer"]["mean_prob"]
    assert summary["scorer"] == "mean_prob" and len(summary["answers"]) == 120
    assert "| verified (accepted_share) | 1.000 | 1.00 | 0.75× |" in run.stdout  # the table, one row per mode
    assert sum(line.startswith("| ") for line in run.stdout.splitlines()) == 1 + len(modes)  # and the header
    assert (tmp_path / "plot.png").stat().st_size > 10_000
