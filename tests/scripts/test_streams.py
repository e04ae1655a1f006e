"""The benchmarks' synchronous stream reader over a canned SSE body (httpx's mock transport)."""

from __future__ import annotations

import json

import httpx
import pytest

from scripts.harness.streams import stream_chat


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
