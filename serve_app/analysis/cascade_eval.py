"""Offline evaluation of the cascade: how quality, strong-tier share, latency and cost move with the
threshold, in RouteLLM's terms, and the threshold a target calls for. Pure: answers in, figures out.

Each eval prompt is answered once by each tier; with the cheap answer's confidence (the router's own
scorer) the cascade at threshold t is replayed exactly: a prompt escalates when its confidence is
below t (`serve_app.routing.cascade.decide`), and then it pays the cheap answer's time and cost plus the
strong one's.

- PGR (performance gap recovered) at a threshold: (accuracy - cheap accuracy) / (strong accuracy -
  cheap accuracy): 0 is the cheap tier alone, 1 the strong one.
- CPT(x): the smallest share of strong calls with which the cascade recovers x of the gap.
- APGR: the area under PGR against the strong-call share, from (0, PGR of the cheap tier) to
  (1, 1). Routing at random recovers the gap in proportion to its strong calls: PGR = share, APGR 0.5.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(answer: str, expected: str) -> bool:
    """The number the answer gives is the expected one: the first after an "=" ("5 + 6 = 11"), else
    the first in the answer."""
    text = answer.replace(",", "")
    found = NUMBER.search(text[text.index("=") + 1:] if "=" in text else text)
    return found is not None and float(found.group()) == float(expected)


def _mentions(answer: str, expected: str) -> bool:
    """The expected word or phrase appears as whole words (any case)."""
    return re.search(rf"\b{re.escape(expected.lower())}\b", answer.lower()) is not None


def _label(answer: str, expected: str, labels: Sequence[str] = ("positive", "negative")) -> bool:
    """The expected label is the first of the labels the answer names."""
    found = [(m.start(), label) for label in labels for m in [re.search(rf"\b{label}\b", answer.lower())] if m]
    return bool(found) and min(found)[1] == expected


def _exact(answer: str, expected: str) -> bool:
    """The answer is exactly the expected text, up to surrounding spaces and final punctuation."""
    return answer.strip().rstrip(".!").strip("\"'") == expected


CHECKS: dict[str, Callable[[str, str], bool]] = {
    "number": _number,
    "mentions": _mentions,
    "label": _label,
    "exact": _exact,
}
"""How an eval item's answer is checked, by the item's `check` field."""


def correct(check: str, answer: str, expected: str) -> bool:
    return CHECKS[check](answer, expected)


@dataclass(frozen=True, slots=True)
class Answered:
    """One eval prompt as each tier answered it."""

    confidence: float
    """The cheap answer's confidence (the router's scorer); 0 for an empty answer."""
    cheap_correct: bool
    strong_correct: bool
    cheap_latency_s: float = 0.0
    strong_latency_s: float = 0.0
    cheap_cost_usd: float = 0.0
    strong_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Point:
    threshold: float
    accuracy: float
    strong_share: float
    pgr: float
    mean_latency_s: float
    mean_cost_usd: float


def accuracies(results: Sequence[Answered]) -> tuple[float, float]:
    """Accuracy of the cheap tier alone and of the strong tier alone."""
    n = len(results)
    return sum(r.cheap_correct for r in results) / n, sum(r.strong_correct for r in results) / n


def pgr(accuracy: float, cheap: float, strong: float) -> float:
    if strong <= cheap:
        raise ValueError(f"the strong tier ({strong:.3f}) is not better than the cheap one ({cheap:.3f}): no gap to recover")
    return (accuracy - cheap) / (strong - cheap)


def at_threshold(results: Sequence[Answered], threshold: float) -> Point:
    n = len(results)
    escalated = [r.confidence < threshold for r in results]
    accuracy = sum(r.strong_correct if e else r.cheap_correct for r, e in zip(results, escalated, strict=True)) / n
    cheap, strong = accuracies(results)
    return Point(
        threshold=threshold, accuracy=accuracy, strong_share=sum(escalated) / n, pgr=pgr(accuracy, cheap, strong),
        mean_latency_s=sum(r.cheap_latency_s + (r.strong_latency_s if e else 0.0)
                           for r, e in zip(results, escalated, strict=True)) / n,
        mean_cost_usd=sum(r.cheap_cost_usd + (r.strong_cost_usd if e else 0.0)
                          for r, e in zip(results, escalated, strict=True)) / n,
    )


def thresholds(results: Sequence[Answered]) -> list[float]:
    """Every threshold that gives a different cascade: 0 (never escalate), one between each pair of
    neighbouring confidences, and one above the highest (always escalate)."""
    levels = sorted({r.confidence for r in results})
    between = [(a + b) / 2 for a, b in zip(levels, levels[1:], strict=False)]
    return [0.0, *between, math.nextafter(levels[-1], math.inf)]


def sweep(results: Sequence[Answered], points: Sequence[float] | None = None) -> list[Point]:
    return [at_threshold(results, t) for t in (thresholds(results) if points is None else points)]


def apgr(curve: Sequence[Point]) -> float:
    """Area under PGR against strong share over [0, 1] (trapezoids; at equal shares the best PGR)."""
    best: dict[float, float] = {}
    for p in curve:
        best[p.strong_share] = max(p.pgr, best.get(p.strong_share, -math.inf))
    shares = sorted(best)
    if shares[0] > 0 or shares[-1] < 1:
        raise ValueError("the curve must run from no strong calls to all strong calls")
    return sum((b - a) * (best[a] + best[b]) / 2 for a, b in zip(shares, shares[1:], strict=False))


def calls_to_recover(curve: Sequence[Point], fraction: float) -> float:
    """CPT: the smallest strong-call share at which PGR reaches `fraction`."""
    return min(p.strong_share for p in curve if p.pgr >= fraction - 1e-12)


def random_routing_accuracy(results: Sequence[Answered], strong_share: float) -> float:
    """Expected accuracy when a random `strong_share` of the prompts goes to the strong tier."""
    cheap, strong = accuracies(results)
    return cheap + strong_share * (strong - cheap)


def threshold_for_share(results: Sequence[Answered], strong_share: float) -> Point:
    """The threshold whose strong-call share is closest to the target, not above it when one ties."""
    return min(sweep(results), key=lambda p: (abs(p.strong_share - strong_share), p.strong_share))


def threshold_for_quality(results: Sequence[Answered], *, accuracy: float | None = None,
                          recovered: float | None = None) -> Point:
    """The cheapest threshold (fewest strong calls) reaching a target accuracy or share of the gap."""
    if (accuracy is None) == (recovered is None):
        raise ValueError("give exactly one of accuracy and recovered")
    meets = [p for p in sweep(results)
             if (p.accuracy >= accuracy - 1e-12 if accuracy is not None else p.pgr >= recovered - 1e-12)]
    if not meets:
        raise ValueError("no threshold reaches the target on this sample")
    return min(meets, key=lambda p: (p.strong_share, p.threshold))
