"""Pick the cascade threshold for a target, or fit a learned deferral rule, and write it into a profile.

    .venv/bin/python -m scripts.calibrate_cascade --results bench-out/cascade-eval.json \
        (--strong-share 0.3 | --accuracy 0.6 | --recovered 0.8) [--learn [--force]] [--write configs/local-cpu.yaml]

The sample is the per-prompt answers of scripts/eval_cascade.py: on the eval set, or on a sample of
real traffic collected the same way. A strong-share target needs only the cheap answers'
confidences. A quality target needs both tiers' correctness: an accuracy, or the share of the gap
between the tiers to recover. The chosen threshold is the one with the fewest strong calls that meets
the target (the closest share, for a share target). With `--write`, the profile's
`cascade.threshold` line is replaced in place, so its comments stay.

With `--learn`, a logistic regression (scikit-learn, at calibration time only) is fitted on features
of the cheap answers' log-probabilities (serve_app.routing.scorers.FEATURES) to predict that keeping
the cheap answer loses nothing (it is right, or the strong one is wrong too). Its APGR is
cross-validated (5 folds: every prompt scored by a rule fitted without it) and reported beside every
fixed scorer's on the same answers; the threshold for the target is chosen on the out-of-fold scores.
`--write` then sets `scorer: learned`, the rule (`cascade.learned`) and the threshold, but only where
the rule beats `mean_prob` (or with `--force`): the router evaluates it with plain arithmetic.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from scripts.eval_cascade import answered, rescored
from serve_app.analysis import cascade_eval
from serve_app.analysis.deferral import learn
from serve_app.config import AppConfig, LearnedRule
from serve_app.routing.scorers import SCORERS

ROOT = Path(__file__).resolve().parents[1]


def calibrate(rows: list[dict], strong_share: float | None = None, accuracy: float | None = None,
              recovered: float | None = None) -> cascade_eval.Point:
    results = answered(rows)
    if strong_share is not None:
        return cascade_eval.threshold_for_share(results, strong_share)
    return cascade_eval.threshold_for_quality(results, accuracy=accuracy, recovered=recovered)


def write_learned(profile: str, rule: LearnedRule, threshold: float) -> str:
    """The profile's text with `scorer: learned`, the rule (one flow-style line) and the threshold."""
    text = write_threshold(profile, threshold)
    match = re.search(r"^(?P<indent>\s*)cascade:\s*\n", text, re.M)
    head, body = text[:match.end()], text[match.end():]
    body = re.sub(rf"^{match['indent']}\s+learned:.*\n", "", body, count=1, flags=re.M)
    line = re.compile(rf"^(?P<lead>(?P<in>{match['indent']}\s+)scorer:\s*)[^\s#]+(?P<rest>.*)$", re.M)
    rule_line = json.dumps(rule.model_dump(exclude_none=True), separators=(", ", ": "))
    body, count = line.subn(lambda m: f"{m['lead']}learned{m['rest']}\n{m['in']}learned: {rule_line}", body, count=1)
    if count == 0:
        raise ValueError("the cascade section has no scorer line")
    text = head + body
    cascade = AppConfig.model_validate(yaml.safe_load(text)["applications"][0]["args"]).cascade
    assert cascade.scorer == "learned" and cascade.learned == rule
    return text


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
    parser.add_argument("--learn", action="store_true", help="fit a learned deferral rule")
    parser.add_argument("--force", action="store_true", help="write the learned rule even where mean_prob beats it")
    parser.add_argument("--write", type=Path, help="a config profile whose cascade.threshold to set")
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())["answers"]
    if args.learn:
        learn_and_write(rows, args)
        return
    point = calibrate(rows, args.strong_share, args.accuracy, args.recovered)
    print(f"threshold {point.threshold:.6g}: strong share {point.strong_share:.1%}, accuracy {point.accuracy:.1%}, "
          f"gap recovered {point.pgr:.1%}, mean latency {point.mean_latency_s:.2f} s, "
          f"mean cost {point.mean_cost_usd * 1e6:.2f} µUSD ({len(rows)} prompts)")
    if args.write:
        args.write.write_text(write_threshold(args.write.read_text(), point.threshold))
        print(f"wrote cascade.threshold: {point.threshold:.6g} into {args.write}")


def learn_and_write(rows: list[dict], args: argparse.Namespace) -> None:
    if any("cheap_logprobs" not in r for r in rows):
        raise SystemExit("the results have no per-prompt log-probabilities: run scripts.eval_cascade again")
    rule, cv_apgr, results = learn(rows)
    fixed = {name: round(cascade_eval.apgr(cascade_eval.sweep(rescored(rows, name))), 4) for name in SCORERS}
    print(json.dumps({"learned_cv_apgr": round(cv_apgr, 4), "apgr_by_scorer": fixed, "random_apgr": 0.5,
                      "rule": rule.model_dump(exclude_none=True)}, indent=1))
    if args.strong_share is not None:
        point = cascade_eval.threshold_for_share(results, args.strong_share)
    else:
        point = cascade_eval.threshold_for_quality(results, accuracy=args.accuracy, recovered=args.recovered)
    print(f"learned threshold {point.threshold:.6g} (out of fold): strong share {point.strong_share:.1%}, "
          f"accuracy {point.accuracy:.1%}, gap recovered {point.pgr:.1%} ({len(rows)} prompts)")
    if not args.write:
        return
    if cv_apgr <= fixed["mean_prob"] and not args.force:
        print(f"not written: the learned rule (cross-validated APGR {cv_apgr:.4f}) does not beat mean_prob "
              f"({fixed['mean_prob']}); --force writes it anyway")
        return
    args.write.write_text(write_learned(args.write.read_text(), rule, point.threshold))
    print(f"wrote scorer: learned, its rule and threshold {point.threshold:.6g} into {args.write}")


if __name__ == "__main__":
    main()
