"""The router over fake backends: route selection, the buffered cascade, error surfacing."""

import asyncio
import math

import pytest

from serve_app.config import CascadeConfig
from serve_app.errors import ContextLengthExceeded, ModelNotFound
from serve_app.generation import GenerationChunk, GenerationRequest, TokenLogprob
from serve_app.routing import CascadeRouter


class FakeTier:
    """Streams fixed words, each token with probability `prob`; records what it was asked."""

    def __init__(self, words, prob, error=None):
        self.words, self.prob, self.error = words, prob, error
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    async def __call__(self, request):
        self.requests.append(request)
        if self.error:
            raise self.error
        want = request.sampling.get("logprobs")
        try:
            for i, word in enumerate(self.words):
                yield GenerationChunk(
                    text=word, token_ids=[i], prompt_tokens=3, completion_tokens=i + 1,
                    logprobs=None if want is None else [TokenLogprob(word, math.log(self.prob))],
                    finish_reason="stop" if i == len(self.words) - 1 else None,
                )
        finally:
            self.closed += 1


def run(coro):
    return asyncio.run(coro)


def open_and_drain(router, model, req):
    """Open and read a route in one event loop (asyncio.run closes open generators when it ends)."""

    async def go():
        stream = await router.open(model, req)
        return stream, [chunk async for chunk in stream.chunks]

    return asyncio.run(go())


def make(cheap_prob=0.9, strong_prob=0.9, threshold=0.5, **errors):
    cheap = FakeTier(["Paris", "."], cheap_prob, errors.get("cheap"))
    strong = FakeTier(["Lyon", "!"], strong_prob, errors.get("strong"))
    router = CascadeRouter({"cheap": cheap, "strong": strong}, CascadeConfig(threshold=threshold), "my-alias")
    return router, cheap, strong


def request(logprobs=None):
    return GenerationRequest("r1", {"max_tokens": 8, "logprobs": logprobs}, prompt="capital of France?")


def test_direct_route_streams_that_tier_only():
    router, cheap, strong = make()
    stream, chunks = open_and_drain(router, "strong", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.served_by == "strong" and not stream.routing.escalated
    assert cheap.requests == []


@pytest.mark.parametrize("model", ["auto", "my-alias"])
def test_confident_cheap_answer_is_kept_without_calling_strong(model):
    router, cheap, strong = make(cheap_prob=0.9, threshold=0.5)
    stream, chunks = open_and_drain(router, model, request())
    assert "".join(c.text for c in chunks) == "Paris."
    assert stream.routing.model_dump() == {
        "route": "auto", "served_by": "cheap", "escalated": False, "confidence": pytest.approx(0.9), "reason": "confident"}
    assert strong.requests == []


def test_cascade_asks_cheap_for_logprobs_but_returns_none_when_caller_did_not():
    router, cheap, _ = make(cheap_prob=0.9)
    _, chunks = open_and_drain(router, "auto", request(logprobs=None))
    assert cheap.requests[0].sampling["logprobs"] == 0
    assert all(c.logprobs is None for c in chunks)


def test_cascade_keeps_logprobs_the_caller_asked_for():
    router, cheap, _ = make(cheap_prob=0.9)
    _, chunks = open_and_drain(router, "auto", request(logprobs=2))
    assert cheap.requests[0].sampling["logprobs"] == 2
    assert all(c.logprobs for c in chunks)


def test_unsure_cheap_answer_escalates_and_only_strong_answer_is_streamed():
    router, cheap, strong = make(cheap_prob=0.2, threshold=0.5)
    stream, chunks = open_and_drain(router, "auto", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.served_by == "strong" and stream.routing.escalated
    assert stream.routing.confidence == pytest.approx(0.2)
    assert strong.requests[0].sampling["logprobs"] is None
    assert strong.requests[0].request_id != cheap.requests[0].request_id


def test_unknown_model_lists_the_routes():
    router, _, _ = make()
    with pytest.raises(ModelNotFound) as caught:
        router.resolve("gpt-9")
    assert caught.value.param == "model"
    for name in ("auto", "my-alias", "cheap", "strong"):
        assert name in caught.value.message


def test_engine_error_is_raised_by_open_before_any_chunk():
    router, _, _ = make(strong=ContextLengthExceeded("too long", param="messages"))
    with pytest.raises(ContextLengthExceeded):
        run(router.open("strong", request()))


def test_closing_a_direct_stream_closes_the_backend():
    router, _, strong = make()

    async def read_one_then_close():
        stream = await router.open("strong", request())
        first = await anext(stream.chunks)
        await stream.chunks.aclose()
        return first

    assert run(read_one_then_close()).text == "Lyon"
    assert strong.closed == 1
