"""The engine replica over a fake engine (no Ray, no vLLM): acknowledging, pacing, scoring, closing; and
the seam's sampling options and error mapping."""

import asyncio
import contextlib

import pytest

from deployments.engine import EngineServer
from deployments.engine_outputs import engine_errors, sampling_options
from serve_app.core.engine import EngineInfo, EngineStats
from serve_app.core.errors import BackendUnavailable, ContextLengthExceeded, InvalidRequest, ServerError
from serve_app.core.generation import Accepted, GenerationChunk, GenerationRequest, Verification


class FakeEngine:
    """Writes `tokens` tokens, one per `step_s`; a reader that reads late gets them merged, as from vLLM."""

    def __init__(self, tokens=6, step_s=0.01):
        self.info = EngineInfo("fake", 128)
        self.tokens, self.step_s = tokens, step_s
        self.closed, self.requests = [], []

    async def generate(self, request):
        self.requests.append(request)
        produced, pending, done = [], [], asyncio.Event()

        async def produce():
            for i in range(self.tokens):
                await asyncio.sleep(self.step_s)
                produced.append(i)
                pending.append(i)
            done.set()

        task = asyncio.ensure_future(produce())
        try:
            while len(produced) < self.tokens or pending:
                while not pending:
                    await asyncio.sleep(self.step_s / 4)
                new, pending[:] = list(pending), []
                finished = len(produced) == self.tokens and not pending
                yield GenerationChunk("".join(f" t{i}" for i in new), new, 3, len(produced),
                                      finish_reason="length" if finished else None, cached_tokens=2)
        finally:
            task.cancel()
            self.closed.append(request.request_id)

    async def score(self, request):
        verdict = Verification((-0.1,), (7,), (-0.1,), (7, 8), (" a", " a b"), (False, False))
        return GenerationChunk("", [], 4, 1, verification=verdict, finish_reason="length")

    async def abort(self, request_id):
        pass

    def stats(self):
        return EngineStats(len(self.requests) - len(self.closed), 0)

    async def check_health(self):
        pass

    def shutdown(self):
        pass


async def collect(server, request):
    return [item async for item in server.generate(request)]


def test_a_generation_is_acknowledged_then_streamed_with_the_replicas_share_metered():
    engine = FakeEngine(tokens=4)
    items = asyncio.run(collect(EngineServer(engine, "strong"), GenerationRequest("r1", {"max_tokens": 4}, prompt="hi")))
    assert isinstance(items[0], Accepted)
    chunks = items[1:]
    assert [t for c in chunks for t in c.token_ids] == [0, 1, 2, 3]
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 4
    assert all(c.replica_seconds > 0 for c in chunks) and engine.closed == ["r1"]


def test_a_paced_stream_sends_the_first_token_at_once_then_everything_ready_per_interval():
    async def run(interval_s):
        engine = FakeEngine(tokens=20, step_s=0.01)
        server = EngineServer(engine, "strong")
        loop = asyncio.get_running_loop()
        started, arrivals = loop.time(), []
        async for item in server.generate(GenerationRequest("r", {}, prompt="p", stream_interval_s=interval_s)):
            if isinstance(item, GenerationChunk):
                arrivals.append((loop.time() - started, item))
        return arrivals

    unpaced, paced = asyncio.run(run(0.0)), asyncio.run(run(0.08))
    assert [t for _, c in paced for t in c.token_ids] == list(range(20)) == [t for _, c in unpaced for t in c.token_ids]
    assert "".join(c.text for _, c in paced) == "".join(c.text for _, c in unpaced)
    assert paced[0][1].token_ids == [0]  # the first token is never held
    assert any(len(c.token_ids) > 1 for _, c in paced)  # what was ready by a send went in it
    gaps = [later - earlier for (earlier, _), (later, _) in zip(paced, paced[1:], strict=False)]
    assert min(gaps) >= 0.08 - 0.005  # at most one message per interval


def test_a_draft_is_not_paced():
    async def run():
        engine = FakeEngine(tokens=10, step_s=0.01)
        request = GenerationRequest("d", {"logprobs": 0}, prompt="p", stream_interval_s=0.5, stop_below_logprob=-2.0)
        return [c async for c in EngineServer(engine, "cheap").generate(request) if isinstance(c, GenerationChunk)]

    chunks = asyncio.run(run())
    assert len(chunks) > 2 and sum(len(c.token_ids) for c in chunks) == 10


def test_a_scoring_request_gets_one_chunk_with_the_verdict():
    items = asyncio.run(collect(EngineServer(FakeEngine(), "strong"),
                                GenerationRequest("s", {}, prompt="p", verify_token_ids=[7])))
    assert isinstance(items[0], Accepted) and len(items) == 2
    assert items[1].verification.ids == (7, 8) and items[1].replica_seconds >= 0


def test_closing_the_replicas_stream_closes_the_engines():
    async def run():
        engine = FakeEngine(tokens=1000)
        stream = EngineServer(engine, "strong").generate(GenerationRequest("c", {}, prompt="p"))
        async with contextlib.aclosing(stream):
            await anext(stream)
            await anext(stream)
        return engine

    assert asyncio.run(run()).closed == ["c"]


def test_the_warm_up_measures_a_full_batch_through_the_seam():
    engine = FakeEngine(tokens=4)
    server = EngineServer(engine, "strong")
    figures = asyncio.run(server.warm_up(batch=3, tokens=4))
    assert figures["batch"] == 3 and figures["ttft_s"] > 0 and figures["tpot_s"] > 0
    assert len({r.request_id for r in engine.requests}) == 3
    assert all(r.sampling["max_tokens"] == 4 and r.sampling["ignore_eos"] for r in engine.requests)
    assert asyncio.run(server.model_info())["warm_up"] == figures
    assert asyncio.run(EngineServer(engine, "strong").warm_up(batch=3, tokens=0)) is None


def test_sampling_options_default_max_tokens_to_the_room_left_and_refuse_an_overflow():
    request = GenerationRequest("r", {"temperature": 0.5, "max_tokens": None}, prompt="p")
    assert sampling_options(request, 100, 128, {}) == {"temperature": 0.5, "max_tokens": 28}
    assert sampling_options(request, 100, 128, {"temperature": 0})["temperature"] == 0  # a structured answer's win
    with pytest.raises(ContextLengthExceeded) as overflow:
        sampling_options(GenerationRequest("r", {"max_tokens": 40}, prompt="p"), 100, 128, {})
    assert overflow.value.param == "max_tokens" and "140 tokens" in str(overflow.value)
    with pytest.raises(ContextLengthExceeded) as full:
        sampling_options(request, 128, 128, {})
    assert full.value.param == "messages"


class ClientFault(Exception):
    parameter = "top_k"


class EngineDead(Exception):
    pass


@pytest.mark.parametrize(("raised", "expected", "param"), [
    (ClientFault("top_k must be positive"), InvalidRequest, "top_k"),
    (EngineDead("gone"), BackendUnavailable, None),
    (ContextLengthExceeded("too long", param="messages"), ContextLengthExceeded, "messages"),
    (RuntimeError("boom"), ServerError, None),
])
def test_engine_errors_become_the_seams(raised, expected, param):
    with pytest.raises(expected) as caught, engine_errors("m", "r", (ClientFault,), (EngineDead,)):
        raise raised
    assert type(caught.value) is expected and getattr(caught.value, "param", None) == param
    if expected is ServerError:
        assert "RuntimeError" in str(caught.value) and "boom" not in str(caught.value)
