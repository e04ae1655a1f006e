"""A learned deferral rule for the confidence cascade: a logistic regression on features of the cheap
answer's log-probabilities (serve_app.routing.scorers.FEATURES), fitted offline on an eval sample
(scikit-learn, imported only here and only when fitting) and cross-validated in APGR. The router
evaluates the fitted rule with plain arithmetic (serve_app.routing.scorers.learned_scorer)."""

from __future__ import annotations

from typing import NamedTuple

from serve_app.analysis import cascade_eval
from serve_app.analysis.cascade_eval import Answered
from serve_app.config import LearnedRule
from serve_app.routing.scorers import FEATURES, features, learned_scorer


def _label(row: dict) -> int:
    """1 when keeping the cheap answer loses nothing: it is right, or the strong answer is wrong too."""
    return int(row["cheap_correct"] or not row["strong_correct"])


def _fit(rows: list[dict], seed: int = 0) -> LearnedRule:
    """Logistic regression on standardized features, its coefficients turned back to raw features."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([features(r["cheap_logprobs"]) for r in rows])
    y = np.array([_label(r) for r in rows])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    model = LogisticRegression(C=1.0, random_state=seed).fit((x - mean) / std, y)
    weights = model.coef_[0] / std
    intercept = float(model.intercept_[0] - (model.coef_[0] * mean / std).sum())
    return LearnedRule(intercept=round(intercept, 6),
                       coefficients={name: round(float(w), 6) for name, w in zip(FEATURES, weights, strict=True)})


class Learned(NamedTuple):
    rule: LearnedRule
    """Fitted on every answered prompt: what a profile's `cascade.learned` takes."""
    cv_apgr: float
    """Its cross-validated APGR: a measurement, reported, never stored in the config."""
    out_of_fold: list[Answered]
    """Every prompt scored by a rule fitted on the other folds."""


def learn(rows: list[dict], folds: int = 5, seed: int = 0) -> Learned:
    """The rule fitted on every answered prompt, and every prompt scored out of fold (by a rule fitted
    on the other folds); an empty cheap answer scores 0, as in the router."""
    from sklearn.model_selection import StratifiedKFold

    usable = [i for i, r in enumerate(rows) if r["cheap_logprobs"]]
    scores = [0.0] * len(rows)
    labels = [_label(rows[i]) for i in usable]
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(usable, labels):
        rule = _fit([rows[usable[i]] for i in train], seed)
        score = learned_scorer(rule.intercept, rule.coefficients)
        for i in test:
            scores[usable[i]] = score(rows[usable[i]]["cheap_logprobs"])
    results = [Answered(**{**{f: r[f] for f in Answered.__dataclass_fields__}, "confidence": c})
               for r, c in zip(rows, scores, strict=True)]
    return Learned(_fit([rows[i] for i in usable], seed), cascade_eval.apgr(cascade_eval.sweep(results)), results)
