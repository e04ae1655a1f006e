"""Confidence scorers for the cascade: token log-probabilities in, a score in [0, 1] out.

A scorer is a plain function registered by name; the config picks one, and an unknown name is a
validation error listing the choices. Log-probabilities are vLLM's raw ones (before temperature),
so a score does not depend on the caller's sampling settings.

Verifiers (`VERIFIERS`, for `cascade.mode: verified`) judge the cheap answer by the strong model's
verdict on it instead (serve_app.core.generation.Verification, one prefill of the strong tier): the share
of answer tokens the strong model would keep under the Token-V3 rule of the speculative cascade, the
share before the first it rejects, or its own mean probability of the answer.

`learned` is a logistic rule over features of the log-probabilities (quantiles, minimum, mean,
length), fitted offline by scripts/calibrate_cascade.py and evaluated here with plain arithmetic:
its coefficients live in the config (`cascade.learned`), so it is built by `scorer_for`.

Every registry here is keyed by the names the config accepts (serve_app.config.ScorerName,
VerifierName, FeatureName); a test keeps the two the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from serve_app.config import CascadeConfig
from serve_app.core.generation import Verification
from serve_app.core.stats import percentile

Scorer = Callable[[Sequence[float]], float]


def mean_prob(logprobs: Sequence[float]) -> float:
    """Geometric mean of the sampled tokens' probabilities: exp(mean logprob). Length-neutral."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0


def min_prob(logprobs: Sequence[float]) -> float:
    """Probability of the least likely sampled token: one shaky token is enough to doubt the answer."""
    return math.exp(min(logprobs)) if logprobs else 0.0


def tail_mean_prob(logprobs: Sequence[float], fraction: float = 0.2) -> float:
    """Geometric mean over the least likely `fraction` of tokens: between `mean_prob` and `min_prob`,
    less swayed by one outlier token than the minimum, more sensitive to weak spots than the mean."""
    if not logprobs:
        return 0.0
    worst = sorted(logprobs)[: max(1, math.ceil(len(logprobs) * fraction))]
    return math.exp(sum(worst) / len(worst))


SCORERS: dict[str, Scorer] = {
    "mean_prob": mean_prob,
    "min_prob": min_prob,
    "tail_mean_prob": tail_mean_prob,
}


def passes_token_v3(verdict: Verification, alpha: float) -> list[bool]:
    """Per scored token v, whether the strong model keeps it: p_strong(v) >= (1 - alpha) * max p_strong
    (Token-V3, Narasimhan et al., ICLR 2025)."""
    bound = math.log1p(-alpha)
    return [lp >= top + bound for lp, top in zip(verdict.logprobs, verdict.top_logprobs, strict=True)]


def kept(verdict: Verification, alpha: float) -> int:
    """How many of the scored tokens the strong model keeps: the longest prefix passing Token-V3."""
    passes = passes_token_v3(verdict, alpha)
    return passes.index(False) if False in passes else len(passes)


Verifier = Callable[[Verification, float], float]


def accepted_share(verdict: Verification, alpha: float) -> float:
    """Share of the answer's tokens that pass Token-V3."""
    passes = passes_token_v3(verdict, alpha)
    return sum(passes) / len(passes) if passes else 0.0


def accepted_prefix(verdict: Verification, alpha: float) -> float:
    """Share of the answer's tokens before the first that fails Token-V3 (where the strong model's
    greedy answer would part from it, at alpha 0)."""
    return kept(verdict, alpha) / len(verdict.logprobs) if verdict.logprobs else 0.0


def strong_mean_prob(verdict: Verification, alpha: float) -> float:
    """The strong model's geometric-mean probability of the answer's tokens (alpha unused)."""
    return mean_prob(verdict.logprobs)


VERIFIERS: dict[str, Verifier] = {
    "accepted_share": accepted_share,
    "accepted_prefix": accepted_prefix,
    "strong_mean_prob": strong_mean_prob,
}
"""Scorers of the `verified` mode: the strong model's verdict on the cheap answer in, [0, 1] out."""

LEARNED = "learned"
"""The scorer name of the fitted logistic rule (`LearnedRule`)."""


FEATURES: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda lp: sum(lp) / len(lp),
    "min": min,
    "q10": lambda lp: percentile(lp, 10),
    "q25": lambda lp: percentile(lp, 25),
    "median": lambda lp: percentile(lp, 50),
    "log_length": lambda lp: math.log(len(lp)),
}
"""Features of a non-empty answer's token log-probabilities that a learned rule may weigh."""


def features(logprobs: Sequence[float], names: Sequence[str] = tuple(FEATURES)) -> list[float]:
    return [FEATURES[name](logprobs) for name in names]


def learned_scorer(intercept: float, coefficients: dict[str, float]) -> Scorer:
    """sigmoid(intercept + sum of coefficient * feature): the fitted probability that keeping the cheap
    answer loses nothing (it is right, or the strong one would be wrong too)."""
    names, weights = list(coefficients), list(coefficients.values())

    def score(logprobs: Sequence[float]) -> float:
        if not logprobs:
            return 0.0
        z = intercept + sum(w * x for w, x in zip(weights, features(logprobs, names), strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    return score


def scorer_for(settings: CascadeConfig) -> Scorer:
    """The confidence scorer the cascade settings name, built (a learned rule from its coefficients)."""
    if settings.scorer == LEARNED:
        return learned_scorer(settings.learned.intercept, settings.learned.coefficients)
    return SCORERS[settings.scorer]
