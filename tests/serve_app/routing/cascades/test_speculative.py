"""The speculative cascade over fake token models: the Token-V3 rule, replacement and added tokens,
resuming from served ids, end of sequence, max_tokens, stop strings, a tier failing mid-answer, and
cancellation."""

import asyncio
import math

import pytest

from serve_app.core.errors import BackendUnavailable, InvalidRequest
from serve_app.core.generation import GenerationRequest, Verification
from serve_app.routing.cascades.drafts import cut_at_stop
from serve_app.routing.cascades.speculative import SpeculativeAnswer
from serve_app.routing.scorers import kept
from tests.serve_app.fakes import EOS, TokenModel, cascade_router, run, text_of


def answer(cheap, strong, draft_tokens=4, alpha=0.0, draft_stop_prob=0.0, **sampling):
    models = {"cheap": cheap, "strong": strong}

    async def open_tier(tier, request):
        return await models[tier].open(request)

    request = GenerationRequest("r1", {"temperature": 0, **sampling}, prompt="q")
    return SpeculativeAnswer(open_tier, request, "cheap", "strong", draft_tokens, alpha, draft_stop_prob)


def collect(spec):
    async def go():
        return [chunk async for chunk in spec.chunks()]

    return run(go())


STRONG = [5, 6, 7, 8, 9, EOS]


def test_token_v3_keeps_the_prefix_within_alpha_of_the_strong_favourite():
    verdict = Verification(logprobs=(math.log(0.6), math.log(0.3), math.log(0.6)), top_ids=(1, 2, 3),
                           top_logprobs=(math.log(0.6),) * 3, ids=(1, 2, 3, 4), texts=("",) * 4, stops=(False,) * 4)
    assert kept(verdict, 0.0) == 1
    assert kept(verdict, 0.4) == 1  # 0.3 < 0.6 * 0.6
    assert kept(verdict, 0.55) == 3  # 0.3 >= 0.6 * 0.45


def test_at_alpha_zero_the_answer_is_the_strong_greedy_answer():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    spec = answer(cheap, strong)
    chunks = collect(spec)
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert "".join(c.text for c in chunks) == text_of(STRONG)
    # the strong tier's opening token; kept 6, replaced 1 by 7; then all kept to the end
    assert [c.token_ids for c in chunks] == [[5], [6, 7], [8, 9, EOS]]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == len(STRONG)
    assert chunks[-1].speculation == {"drafted": 7, "cut": 0, "accepted": 4, "replaced": 1, "added": 1, "passes": 2,
                                      "strong_failed": 0, "cheap_failed": 0, "drafting_stopped": 0}
    assert chunks[0].speculation is None


def test_every_draft_resumes_from_the_served_token_ids():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    collect(answer(cheap, strong))
    assert [r.prefix_token_ids for r in cheap.requests] == [[5], [5, 6, 7]]
    assert [(r.prefix_token_ids, r.verify_token_ids) for r in strong.requests] == [
        ([], None), ([5], [6, 1, 8, 9]), ([5, 6, 7], [8, 9, EOS])]
    assert all("stop" not in r.sampling for r in cheap.requests + strong.requests)
    assert all(r.sampling["max_tokens"] == 1 for r in strong.requests)  # what admission expects of a pass
    assert {r.session_key for r in cheap.requests + strong.requests} == {"r1"}  # one version per tier


def test_a_kept_block_brings_the_strong_tiers_next_token_with_it():
    cheap, strong = TokenModel(STRONG), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong, draft_tokens=2))
    assert [c.token_ids for c in chunks] == [[5], [6, 7, 8], [9, EOS]]
    assert chunks[-1].speculation["added"] == 2 and chunks[-1].finish_reason == "stop"
    assert chunks[-1].speculation["passes"] == 2


def test_the_strong_tier_ending_the_answer_ends_it():
    cheap, strong = TokenModel([5, 6, 7, 3, 4, EOS]), TokenModel([5, 6, 7, EOS])
    chunks = collect(answer(cheap, strong))
    assert [t for c in chunks for t in c.token_ids] == [5, 6, 7, EOS]
    assert chunks[-1].finish_reason == "stop" and "".join(c.text for c in chunks) == " w5 w6 w7"


def test_a_draft_ends_after_the_first_token_the_cheap_tier_is_unsure_of():
    # The cheap tier is unsure of its token at position 2 (1, which the strong tier rejects): the first
    # draft stops there instead of scoring 8 and 9 after it; the answer is the same.
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS], unsure={2}), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong, draft_stop_prob=0.5))
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert [r.verify_token_ids for r in strong.requests[1:]] == [[6, 1], [8, 9, EOS]]
    assert chunks[-1].speculation == {"drafted": 5, "cut": 1, "accepted": 4, "replaced": 1, "added": 1,
                                           "passes": 2, "strong_failed": 0, "cheap_failed": 0, "drafting_stopped": 0}
    assert all(r.sampling["logprobs"] == 0 and r.stop_below_logprob == pytest.approx(math.log(0.5))
               for r in cheap.requests)
    assert all("logprobs" not in r.sampling and r.stop_below_logprob is None for r in strong.requests)


def test_without_a_stop_probability_drafts_are_whole_blocks():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS], unsure={2}), TokenModel(STRONG)
    collect(answer(cheap, strong))
    assert strong.requests[1].verify_token_ids == [6, 1, 8, 9]
    assert all(r.stop_below_logprob is None and "logprobs" not in r.sampling for r in cheap.requests)


def test_a_larger_alpha_keeps_more_of_the_cheap_answer():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong, alpha=0.55))
    assert [t for c in chunks for t in c.token_ids] == [5, 6, 1, 8, 9, EOS]
    assert chunks[-1].speculation["replaced"] == 0


def test_max_tokens_ends_the_answer_with_length():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong, max_tokens=4))
    assert [t for c in chunks for t in c.token_ids] == [5, 6, 7, 8]
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 4
    assert all(r.sampling["max_tokens"] <= 4 for r in cheap.requests)


def test_a_stop_string_cuts_the_served_text():
    cheap, strong = TokenModel(STRONG), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong, stop=[" w8"]))
    assert "".join(c.text for c in chunks) == " w5 w6 w7"
    assert chunks[-1].finish_reason == "stop"
    assert cut_at_stop("a b c", ["c", "b"]) == 2 and cut_at_stop("abc", ["x"]) is None


def test_the_strong_tier_failing_mid_answer_leaves_the_rest_to_the_cheap_tier():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, 2, EOS]), TokenModel(STRONG, fail_calls={3})  # the second pass
    chunks = collect(answer(cheap, strong))
    assert [t for c in chunks for t in c.token_ids] == [5, 6, 7, 8, 9, 2, EOS]  # verified, then cheap alone
    assert chunks[-1].speculation["strong_failed"] == 1 and chunks[-1].finish_reason == "stop"


def test_the_cheap_tier_failing_leaves_the_answer_to_the_strong_tier():
    cheap, strong = TokenModel([5, 6, 1, 8], fail_calls={2}), TokenModel(STRONG)
    chunks = collect(answer(cheap, strong))
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert chunks[-1].speculation["cheap_failed"] == 1
    assert strong.requests[-1].prefix_token_ids == [5, 6, 7] and strong.requests[-1].verify_token_ids is None


def test_client_errors_are_not_worked_around():
    async def open_tier(tier, request):
        raise InvalidRequest("bad")

    spec = SpeculativeAnswer(open_tier, GenerationRequest("r", {}, prompt="q"), "cheap", "strong", 4, 0.0)
    with pytest.raises(InvalidRequest):
        collect(spec)


def test_closing_the_answer_closes_the_tier_streams():
    cheap, strong = TokenModel([5], fail_calls={1}), TokenModel(STRONG, hang_after=1)

    async def go():
        chunks = answer(cheap, strong).chunks()
        first = await anext(chunks), await anext(chunks)  # the opening token, then the strong tier's next
        reading = asyncio.ensure_future(anext(chunks))
        await asyncio.sleep(0.05)
        assert strong.open_streams == 1  # the strong tier is generating the rest alone
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await chunks.aclose()
        return first

    assert [c.token_ids for c in run(go())] == [[5], [6]]
    assert strong.open_streams == 0 and cheap.open_streams == 0


def router(cheap, strong, **cascade):
    return cascade_router(cheap, strong, **{"mode": "speculative", **cascade})


def test_the_auto_route_streams_the_speculative_answer_and_bills_every_pass():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)

    async def go():
        stream = await router(cheap, strong).open("auto", GenerationRequest("r", {"temperature": 0}, prompt="q"))
        return stream, [chunk async for chunk in stream.chunks]

    stream, chunks = run(go())
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert (stream.routing.route, stream.routing.served_by, stream.routing.reason) == ("auto", "strong", "speculative")
    assert stream.routing.fallback_reason is None and stream.routing.version == "v1"
    assert [a.backend for a in stream.ledger.attempts] == ["strong", "cheap", "strong", "cheap", "strong"]
    assert all(a.error is None and a.finished_s is not None for a in stream.ledger.attempts)
    assert [a.input_tokens for a in stream.ledger.attempts] == [5, 6, 6, 8, 8]
    assert chunks[0].prompt_tokens == 5 and chunks[-1].completion_tokens == len(STRONG)
    assert cheap.open_streams == strong.open_streams == 0


def test_the_speculative_route_refuses_logprobs_and_falls_back_when_both_tiers_fail():
    async def go(request, cheap, strong):
        return await router(cheap, strong).open("auto", request)

    with pytest.raises(InvalidRequest):
        run(go(GenerationRequest("r", {"logprobs": 1}, prompt="q"), TokenModel(STRONG), TokenModel(STRONG)))
    with pytest.raises(BackendUnavailable):
        run(go(GenerationRequest("r", {}, prompt="q"), TokenModel(STRONG, fail_calls={1}),
                       TokenModel(STRONG, fail_calls={1})))


def test_a_strong_failure_in_the_first_round_is_said_in_the_routing():
    cheap, strong = TokenModel(STRONG), TokenModel(STRONG, fail_calls={1})

    async def go():
        stream = await router(cheap, strong).open("auto", GenerationRequest("r", {}, prompt="q"))
        return stream, [chunk async for chunk in stream.chunks]

    stream, chunks = run(go())
    assert stream.routing.served_by == "cheap" and "strong" in stream.routing.fallback_reason
    assert [t for c in chunks for t in c.token_ids] == STRONG


def test_a_request_may_choose_its_cascade_only_where_the_config_allows_it():
    async def go(allow, cascade):
        r = router(TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG), mode="confidence", allow_request_overrides=allow)
        stream = await r.open("auto", GenerationRequest("r", {}, prompt="q", cascade=cascade))
        return stream, [chunk async for chunk in stream.chunks]

    with pytest.raises(InvalidRequest, match="allow_request_overrides"):
        run(go(False, {"mode": "speculative"}))
    stream, chunks = run(go(True, {"mode": "speculative", "alpha": 0.55}))
    assert stream.routing.reason == "speculative" and [t for c in chunks for t in c.token_ids] == [5, 6, 1, 8, 9, EOS]
    _, chunks = run(go(True, {"mode": "speculative", "draft_tokens": 2}))
    assert [c.token_ids for c in chunks] == [[5], [6, 7], [8, 9, EOS]] and chunks[-1].speculation["drafted"] == 4
    for threshold, served_by in ((0.5, "cheap"), (0.7, "strong")):  # confidence mode; the cheap answer scores 0.6
        stream, chunks = run(go(True, {"threshold": threshold}))
        assert stream.routing.served_by == served_by and chunks[-1].speculation is None


FORMAT = {"response_format": {"type": "json_object"}}


def structured_answer(cheap, strong, **kwargs):
    models = {"cheap": cheap, "strong": strong}

    async def open_tier(tier, request):
        return await models[tier].open(request)

    request = GenerationRequest("r1", {"temperature": 0}, prompt="q", structured=FORMAT)
    return SpeculativeAnswer(open_tier, request, "cheap", "strong", 4, 0.0, **kwargs)


def test_with_a_format_drafts_are_free_text_and_every_verdict_is_taken_under_it():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    chunks = collect(structured_answer(cheap, strong, replan=lambda: 0))  # the load would stop the drafts
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert all(r.structured is None for r in cheap.requests)  # vLLM cannot start a grammar after a prefix
    assert all(r.structured == FORMAT for r in strong.requests)  # the opening token and every verdict
    assert chunks[-1].speculation["drafting_stopped"] == 0  # a constrained answer keeps drafting


def test_with_a_format_the_strong_tier_finishes_alone_by_verdicts_on_no_draft():
    cheap, strong = TokenModel([5, 6], fail_calls={2}), TokenModel(STRONG)  # the second draft fails
    chunks = collect(structured_answer(cheap, strong))
    assert [t for c in chunks for t in c.token_ids] == STRONG
    finishing = strong.requests[3:]
    assert finishing and all(r.verify_token_ids == [] and r.structured == FORMAT for r in finishing)


def test_with_a_format_a_strong_failure_mid_answer_is_an_error_not_an_unchecked_draft():
    cheap, strong = TokenModel(STRONG), TokenModel(STRONG, fail_calls={2})  # the first verdict fails
    with pytest.raises(BackendUnavailable):
        collect(structured_answer(cheap, strong))
