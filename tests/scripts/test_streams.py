"""The benchmarks' stream readers over canned bodies (httpx's mock transport): the synchronous one, and
the asyncio load generator's (`timed_chat`)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from scripts.harness.streams import stream_chat, timed_chat


def sse(*deltas: dict, finish: str | None = "stop") -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def client(status: int, body: bytes) -> httpx.Client:
    def reply(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(status, content=body, headers={"x-trace-id": "abc"})

    return httpx.Client(base_url="http://test", transport=httpx.MockTransport(reply))


def test_the_first_token_is_the_first_chunk_with_content_and_the_text_is_whole():
    with client(200, sse({"role": "assistant", "content": ""}, {"content": "Par"}, {"content": "is"})) as http:
        answer = stream_chat(http, {"model": "strong", "messages": []})
    assert answer.text == "Paris" and answer.headers["x-trace-id"] == "abc"
    assert answer.sent_ns <= answer.first_ns and answer.ttft_s >= 0


def test_an_answer_whose_only_token_is_empty_ends_its_first_token_at_the_finish():
    with client(200, sse({"role": "assistant", "content": ""}, finish="length")) as http:
        assert stream_chat(http, {"model": "strong", "messages": []}).text == ""


def test_a_refusal_raises_and_a_stream_without_a_token_is_an_error():
    with client(503, b'{"error": {"code": "overloaded"}}') as http, pytest.raises(httpx.HTTPStatusError):
        stream_chat(http, {"model": "strong", "messages": []})
    with client(200, b"data: [DONE]\n\n") as http, pytest.raises(AssertionError):
        stream_chat(http, {"model": "strong", "messages": []})


def async_client(status: int, body: bytes, headers: dict | None = None) -> httpx.AsyncClient:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers or {})

    return httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(reply))


def timed(status: int, body: bytes, stream: bool = True, headers: dict | None = None) -> dict:
    async def go():
        async with async_client(status, body, headers) as http:
            return await timed_chat(http, "http://test/v1/chat/completions", {"model": "auto"}, stream)

    return asyncio.run(go())


def test_a_timed_stream_is_complete_only_with_done_and_no_error_event():
    usage = b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n\n'
    whole = sse({"content": "Par"}, {"content": "is"}).replace(b"data: [DONE]", usage + b"data: [DONE]")
    result = timed(200, whole, headers={"x-served-by": "strong", "x-cascade-plan": "speculative-8"})
    assert result["complete"] and result["tokens"] == 2 and result["ttft_s"] is not None
    assert (result["served_by"], result["plan"]) == ("strong", "speculative-8")
    broken = sse({"content": "Par"}).replace(b"data: [DONE]", b'data: {"error": {"code": "timeout"}}\n\ndata: [DONE]')
    assert not timed(200, broken)["complete"]
    assert not timed(200, sse({"content": "Par"}).replace(b"data: [DONE]\n\n", b""))["complete"]


def test_a_timed_refusal_reads_the_envelope_and_a_whole_answer_its_usage():
    refused = timed(503, b'{"error": {"code": "overloaded", "message": "busy"}}', headers={"retry-after": "2"})
    assert (refused["status"], refused["code"], refused["retry_after"]) == (503, "overloaded", "2")
    assert timed(502, b"Bad Gateway")["code"] == "not_an_envelope"
    answer = timed(200, json.dumps({"choices": [], "usage": {"completion_tokens": 7}}).encode(), stream=False)
    assert answer["complete"] and answer["tokens"] == 7 and answer["ttft_s"] == answer["latency_s"]
