"""The synthetic engine on its own: deterministic answers at its pace, its limits, stops, cancellation,
its verdicts, and deltas merged for a late reader."""

import asyncio
import contextlib

import pytest

from deployments.synthetic import EOS, SyntheticEngine, decode, encode, token_at
from serve_app.config import SyntheticEngineConfig
from serve_app.core.errors import ContextLengthExceeded
from serve_app.core.generation import GenerationRequest


def engine(**pace):
    return SyntheticEngine("synthetic", SyntheticEngineConfig(**{"tokens_per_s": 200, "prefill_s": 0.0, **pace}),
                           export_metrics=False)


async def answer(synthetic, request, read_every_s=0.0):
    chunks = []
    async for chunk in synthetic.generate(request):
        chunks.append(chunk)
        await asyncio.sleep(read_every_s)
    return chunks


def chat(text, **sampling):
    return GenerationRequest("r-" + text, sampling, messages=[{"role": "user", "content": text}])


def test_answers_are_deterministic_the_same_on_every_engine_and_end_with_stop_or_length():
    async def run():
        one, two = engine(answer_tokens=5), engine(answer_tokens=5)
        first = await answer(one, chat("hello"))
        again = await answer(two, chat("hello"))
        other = await answer(one, chat("bye"))
        capped = await answer(one, chat("hello", max_tokens=3))
        endless = await answer(one, chat("hello", max_tokens=9, ignore_eos=True))
        assert one.stats().generated == 5 + 5 + 3 + 9 and one.stats().unfinished == 0
        return first, again, other, capped, endless

    first, again, other, capped, endless = asyncio.run(run())
    ids = [t for c in first for t in c.token_ids]
    assert len(ids) == 5 and ids == [t for c in again for t in c.token_ids] != [t for c in other for t in c.token_ids]
    assert first[-1].finish_reason == "stop" and first[-1].completion_tokens == 5
    assert "".join(c.text for c in first) == decode(ids) and encode(decode(ids)) == ids
    assert [t for c in capped for t in c.token_ids] == ids[:3] and capped[-1].finish_reason == "length"
    assert sum(len(c.token_ids) for c in endless) == 9 and endless[-1].finish_reason == "length"


def test_it_keeps_its_pace_and_a_late_reader_gets_the_tokens_merged():
    async def run():
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks = await answer(engine(tokens_per_s=100), chat("x", max_tokens=10), read_every_s=0.05)
        return chunks, loop.time() - started

    chunks, seconds = asyncio.run(run())
    assert sum(len(c.token_ids) for c in chunks) == 10 and seconds >= 0.09  # 10 steps of 10 ms at the least
    assert len(chunks) < 10 and chunks[-1].completion_tokens == 10


def test_a_stop_string_ends_the_answer_before_it():
    async def run():
        full = await answer(engine(), chat("s", max_tokens=6))
        text = "".join(c.text for c in full)
        stop = text.split()[3]
        cut = await answer(engine(), chat("s", max_tokens=6, stop=[stop]))
        return text, stop, cut

    text, stop, cut = asyncio.run(run())
    assert "".join(c.text for c in cut) == text.split(stop)[0] and cut[-1].finish_reason == "stop"


def test_logprobs_when_asked_and_the_context_bound():
    chunks = asyncio.run(answer(engine(), chat("l", max_tokens=3, logprobs=2)))
    assert [len(c.logprobs) for c in chunks] == [len(c.token_ids) for c in chunks]
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(answer(engine(max_model_len=8), chat("l", max_tokens=100)))


def test_the_batch_bounds_what_runs_and_a_closed_stream_leaves_the_engine():
    async def run():
        synthetic = engine(batch=2, tokens_per_s=50)
        streams = [synthetic.generate(chat(f"b{i}", max_tokens=1000)) for i in range(3)]
        firsts = await asyncio.wait_for(asyncio.gather(*(anext(s) for s in streams[:2])), 5)
        third = asyncio.ensure_future(anext(streams[2]))
        await asyncio.sleep(0.1)
        waiting = not third.done() and synthetic.stats().unfinished == 3
        async with contextlib.aclosing(streams[0]):
            pass
        await asyncio.wait_for(third, 5)  # the closed one's place went to the waiting one
        for stream in streams[1:]:
            await stream.aclose()
        return firsts, waiting, synthetic.stats().unfinished

    firsts, waiting, left = asyncio.run(run())
    assert all(len(f.token_ids) >= 1 for f in firsts) and waiting and left == 0


def test_its_verdict_accepts_its_own_tokens_and_ends_where_its_answer_does():
    async def run():
        synthetic = engine(answer_tokens=4)
        answer_ids = [t for c in await answer(synthetic, chat("v")) for t in c.token_ids]
        request = chat("v")
        own = await synthetic.score(GenerationRequest("v1", {}, messages=request.messages, prefix_token_ids=[answer_ids[0]],
                                                      verify_token_ids=[answer_ids[1], 5]))
        tail = await synthetic.score(GenerationRequest("v2", {}, messages=request.messages, prefix_token_ids=answer_ids[:3],
                                                       verify_token_ids=[answer_ids[3]]))
        return answer_ids, own.verification, tail.verification

    ids, own, tail = asyncio.run(run())
    assert own.top_ids[0] == ids[1] and own.logprobs[0] > own.logprobs[1]  # its own token, then a wrong one
    assert own.ids == (ids[1], ids[2], ids[3]) and not any(own.stops)
    assert tail.ids == (ids[3], EOS) and tail.stops == (False, True) and tail.texts[-1] == decode([ids[3]])
    assert token_at(0, 0) != EOS
