"""Confidence scorers for the cascade: token log-probabilities in, a score in [0, 1] out.

A scorer is a plain function registered by name; the config picks one, and an unknown name is a
validation error listing the choices. Log-probabilities are vLLM's raw ones (before temperature),
so a score does not depend on the caller's sampling settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
