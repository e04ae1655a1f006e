"""Pick the cascade threshold for a target and write it into a config profile.

    .venv/bin/python -m scripts.calibrate_cascade --results bench-out/cascade-eval.json \
        (--strong-share 0.3 | --accuracy 0.6 | --recovered 0.8) [--write configs/local-cpu.yaml]

The sample is the per-prompt answers of scripts/eval_cascade.py: on the eval set, or on a sample of
real traffic collected the same way. A strong-share target needs only the cheap answers'
confidences. A quality target needs both tiers' correctness: an accuracy, or the share of the gap
between the tiers to recover. The chosen threshold is the one with the fewest strong calls that meets
the target (the closest share, for a share target). With `--write`, the profile's
`cascade.threshold` line is replaced in place, so its comments stay.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from scripts.eval_cascade import answered
from serve_app.analysis import cascade_eval
from serve_app.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]


def calibrate(rows: list[dict], strong_share: float | None = None, accuracy: float | None = None,
              recovered: float | None = None) -> cascade_eval.Point:
    results = answered(rows)
    if strong_share is not None:
        return cascade_eval.threshold_for_share(results, strong_share)
    return cascade_eval.threshold_for_quality(results, accuracy=accuracy, recovered=recovered)


def write_threshold(profile: str, threshold: float) -> str:
    """The profile's text with the first application's `cascade.threshold` set, nothing else changed."""
    match = re.search(r"^(?P<indent>\s*)cascade:\s*\n", profile, re.M)
    if match is None:
        raise ValueError("the profile has no cascade section")
    block = re.compile(rf"^(?P<lead>{match['indent']}\s+threshold:\s*)[^\s#]+", re.M)
    updated, count = block.subn(rf"\g<lead>{threshold:.6g}", profile[match.end():], count=1)
    if count == 0:
        raise ValueError("the cascade section has no threshold line")
    text = profile[:match.end()] + updated
    args = yaml.safe_load(text)["applications"][0]["args"]
    assert AppConfig.model_validate(args).cascade.threshold == float(f"{threshold:.6g}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench-out/cascade-eval.json")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--strong-share", type=float, help="share of requests the strong tier may answer")
    target.add_argument("--accuracy", type=float, help="accuracy to reach")
    target.add_argument("--recovered", type=float, help="share of the quality gap between the tiers to recover")
    parser.add_argument("--write", type=Path, help="a config profile whose cascade.threshold to set")
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())["answers"]
    point = calibrate(rows, args.strong_share, args.accuracy, args.recovered)
    print(f"threshold {point.threshold:.6g}: strong share {point.strong_share:.1%}, accuracy {point.accuracy:.1%}, "
          f"gap recovered {point.pgr:.1%}, mean latency {point.mean_latency_s:.2f} s, "
          f"mean cost {point.mean_cost_usd * 1e6:.2f} µUSD ({len(rows)} prompts)")
    if args.write:
        args.write.write_text(write_threshold(args.write.read_text(), point.threshold))
        print(f"wrote cascade.threshold: {point.threshold:.6g} into {args.write}")


if __name__ == "__main__":
    main()
