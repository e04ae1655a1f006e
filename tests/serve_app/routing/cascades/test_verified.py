"""The verified cascade over fake token models: the verifiers' arithmetic, the strong tier's verdict on
the cheap answer's text deciding between it and an escalation, and a verdict that cannot be had."""

import math

import pytest

from serve_app.core.errors import InvalidRequest
from serve_app.core.generation import GenerationRequest, Verification
from serve_app.routing.scorers import accepted_prefix, accepted_share, strong_mean_prob
from tests.serve_app.fakes import EOS, TokenModel, cascade_router, run, text_of

CHEAP, STRONG = [5, 6, 1, 8, 9, EOS], [5, 6, 7, 8, 9, EOS]


def test_verifiers_count_what_the_strong_model_keeps():
    verdict = Verification(logprobs=(math.log(0.6), math.log(0.3), math.log(0.6), math.log(0.6)), top_ids=(1, 2, 3, 4),
                           top_logprobs=(math.log(0.6),) * 4, ids=(1, 2, 3, 4, 5), texts=("",) * 5, stops=(False,) * 5)
    assert accepted_share(verdict, 0.0) == 0.75 and accepted_prefix(verdict, 0.0) == 0.25
    assert accepted_share(verdict, 0.55) == accepted_prefix(verdict, 0.55) == 1.0  # 0.3 >= 0.45 * 0.6
    assert strong_mean_prob(verdict, 0.0) == pytest.approx((0.6**3 * 0.3) ** 0.25)
    empty = Verification(logprobs=(), top_ids=(), top_logprobs=(), ids=(0,), texts=("",), stops=(True,))
    assert accepted_share(empty, 0.0) == accepted_prefix(empty, 0.0) == strong_mean_prob(empty, 0.0) == 0.0


def router(cheap, strong, **cascade):
    return cascade_router(cheap, strong, **{"mode": "verified", "threshold": 0.7, **cascade})


def served(r, request=None):
    async def go():
        stream = await r.open("auto", request or GenerationRequest("r", {"temperature": 0}, prompt="q"))
        return stream, [chunk async for chunk in stream.chunks]

    return run(go())


@pytest.mark.parametrize(("verifier", "escalated"), [("accepted_share", False), ("accepted_prefix", True)])
def test_the_strong_tiers_verdict_on_the_cheap_answer_decides(verifier, escalated):
    cheap, strong = TokenModel(CHEAP), TokenModel(STRONG)
    stream, chunks = served(router(cheap, strong, verifier=verifier))
    # the strong model would say 7 where the cheap one said 1: 4 of 5 tokens kept, 2 of 5 before the first miss
    assert stream.routing.verification == {"accepted_share": 0.8, "accepted_prefix": 0.4, "tokens": 5,
                                           "strong_mean_prob": pytest.approx((0.6**4 * 0.3) ** 0.2, abs=1e-6)}
    assert stream.routing.escalated is escalated
    assert stream.routing.confidence == stream.routing.verification[verifier]
    assert "".join(c.text for c in chunks) == text_of(STRONG if escalated else CHEAP)
    assert strong.requests[0].verify_text == text_of(CHEAP) and strong.requests[0].verify_token_ids is None
    assert [a.backend for a in stream.ledger.attempts] == ["cheap", "strong", *(["strong"] if escalated else [])]
    assert all(a.error is None for a in stream.ledger.attempts)


def test_without_a_verdict_the_cheap_answer_is_served_and_the_routing_says_why():
    stream, chunks = served(router(TokenModel(CHEAP), TokenModel(STRONG, fail_calls={1})))
    assert "".join(c.text for c in chunks) == text_of(CHEAP)
    assert (stream.routing.served_by, stream.routing.reason, stream.routing.escalated) == ("cheap", "unverified", False)
    assert stream.routing.fallback_reason.startswith("strong:") and stream.routing.verification is None


def test_an_empty_cheap_answer_escalates_without_a_verdict():
    strong = TokenModel(STRONG)
    stream, chunks = served(router(TokenModel([EOS]), strong))
    assert stream.routing.reason == "empty_answer" and stream.routing.served_by == "strong"
    assert [r.verify_text for r in strong.requests] == [None]


def test_request_overrides_are_validated_like_the_config():
    r = router(TokenModel(CHEAP), TokenModel(STRONG), mode="confidence", allow_request_overrides=True)
    with pytest.raises(InvalidRequest, match="cascade.verifier: Input should be 'accepted_share'") as raised:
        served(r, GenerationRequest("r", {}, prompt="q", cascade={"mode": "verified", "verifier": "nope"}))
    assert raised.value.param == "cascade.verifier"
    stream, _ = served(r, GenerationRequest("r", {}, prompt="q", cascade={"mode": "verified", "threshold": 0.0}))
    assert stream.routing.verification["tokens"] == 5 and not stream.routing.escalated
    with pytest.raises(ValueError, match="cascade.verifier"):
        router(TokenModel(CHEAP), TokenModel(STRONG), verifier="nope")
