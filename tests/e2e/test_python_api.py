"""Python callers inside a pipeline: the app's DeploymentHandle, typed requests and results, no HTTP;
and cancellation reaching the engine when an HTTP client goes away."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.api.protocol import (
    CascadeOptions,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
)

pytestmark = pytest.mark.e2e


def request(**kwargs) -> ChatCompletionRequest:
    """The confidence cascade, whatever mode the profile ships for `auto`: its routing says why."""
    return ChatCompletionRequest(model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                 temperature=0, max_tokens=16, cascade=CascadeOptions(mode="confidence"), **kwargs)


def test_handle_chat_returns_a_typed_response(serve_handles):
    app = serve_handles.get_app_handle("llm")
    response = app.chat.remote(request()).result(timeout_s=300)
    assert isinstance(response, ChatCompletionResponse)
    assert response.choices[0].message.content
    assert response.routing.route == "auto" and response.routing.served_by in ("cheap", "strong")
    assert response.routing.confidence is not None


def test_handle_stream_yields_typed_chunks(serve_handles):
    app = serve_handles.get_app_handle("llm")
    whole = app.chat.remote(request()).result(timeout_s=300)
    chunks = list(app.options(stream=True).chat_stream.remote(request(stream=True, stream_options={"include_usage": True})))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[0].routing == whole.routing
    tokens = {"prompt_tokens", "completion_tokens", "total_tokens"}  # the cost is the replica time each run took
    assert chunks[-1].usage.model_dump(include=tokens) == whole.usage.model_dump(include=tokens)
    assert chunks[-1].usage.cost_usd > 0 and whole.usage.cost_usd > 0


def test_handle_completions(serve_handles):
    app = serve_handles.get_app_handle("llm")
    response = app.completions.remote(CompletionRequest(model="strong", prompt="1, 2, 3,", max_tokens=5)).result(timeout_s=300)
    assert response.model == "strong" and response.usage.completion_tokens == 5


def test_client_disconnect_cancels_generation_in_the_engine(stack, serve_handles):
    engine = serve_handles.get_deployment_handle("llm-strong-v1", app_name="llm")
    body = {"model": "strong", "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=120) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert engine.num_unfinished_requests.remote().result(timeout_s=30) == 1
    # 1500 tokens take minutes on this CPU; once the client is gone the engine must stop within seconds.
    deadline = time.monotonic() + 30
    while engine.num_unfinished_requests.remote().result(timeout_s=30) != 0:
        assert time.monotonic() < deadline, "the engine kept generating after the client went away"
        time.sleep(0.5)
