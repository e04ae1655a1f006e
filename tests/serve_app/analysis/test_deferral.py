"""The learned deferral rule: fitted on features of the cheap answers' log-probabilities, cross-validated,
and evaluated by the router with plain arithmetic."""

import random

from serve_app.analysis import cascade_eval
from serve_app.analysis.deferral import learn
from serve_app.routing.scorers import learned_scorer, mean_prob


def rows(n=120, seed=1):
    """Cheap answers whose mean probability says nothing (wrong ones are mostly confident) but whose
    least likely token does: a wrong answer has one token the cheap model doubted."""
    rng, result = random.Random(seed), []
    for i in range(n):
        right = i % 2 == 0
        length = rng.randint(3, 12)
        logprobs = [rng.uniform(-0.6, -0.4) for _ in range(length)] if right else \
            [rng.uniform(-0.15, -0.05) for _ in range(length - 1)] + [rng.uniform(-4.0, -2.0)]
        rng.shuffle(logprobs)
        result.append({"id": i, "cheap_logprobs": logprobs, "confidence": mean_prob(logprobs),
                       "cheap_correct": right, "strong_correct": True, "cheap_latency_s": 0.5, "strong_latency_s": 1.0,
                       "cheap_cost_usd": 1e-6, "strong_cost_usd": 2e-6})
    return result


def test_the_learned_rule_finds_the_signal_the_mean_misses():
    sample = rows()
    rule, cv_apgr, out_of_fold = learn(sample)
    by_mean = cascade_eval.apgr(cascade_eval.sweep(cascade_eval_rows(sample)))
    assert cv_apgr > 0.7 > 0.5 > by_mean  # 0.75 is a perfect ranking here: half the answers are right
    assert len(out_of_fold) == len(sample) and set(rule.coefficients) >= {"min", "mean"}
    score = learned_scorer(rule.intercept, rule.coefficients)
    right, wrong = sample[0]["cheap_logprobs"], sample[1]["cheap_logprobs"]
    assert 0 <= score(wrong) < 0.5 < score(right) <= 1 and score([]) == 0.0


def cascade_eval_rows(sample):
    return [cascade_eval.Answered(r["confidence"], r["cheap_correct"], r["strong_correct"]) for r in sample]
