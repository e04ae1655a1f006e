"""The external-API backend against a real OpenAI-compatible server (vLLM's own, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.external import ExternalBackend
from serve_app.config import ExternalConfig
from serve_app.core.errors import BackendUnavailable
from serve_app.core.generation import GenerationRequest

pytestmark = pytest.mark.e2e


def run(backend, request):
    async def collect():
        return [chunk async for chunk in backend(request)]

    return asyncio.run(collect())


def backend(stack, **overrides) -> ExternalBackend:
    fields = {"base_url": stack.external.base_url, "model": stack.external.model, **overrides}
    return ExternalBackend("backup", ExternalConfig(**fields))


def test_chat_streams_text_usage_and_finish(stack):
    request = GenerationRequest("x1", {"max_tokens": 12, "temperature": 0.0, "top_k": 1},
                                messages=[{"role": "user", "content": "What is the capital of France?"}])
    chunks = run(backend(stack), request)
    assert "Paris" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason in ("stop", "length")
    assert chunks[-1].prompt_tokens > 10 and 0 < chunks[-1].completion_tokens <= 12


def test_completion_with_logprobs(stack):
    request = GenerationRequest("x2", {"max_tokens": 4, "temperature": 0.0, "logprobs": 2},
                                prompt="The capital of France is")
    chunks = run(backend(stack), request)
    logprobs = [lp for c in chunks for lp in c.logprobs or ()]
    assert len(logprobs) == 4 == chunks[-1].completion_tokens
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in logprobs)


def test_unreachable_provider_is_unavailable_not_a_crash(stack):
    request = GenerationRequest("x3", {"max_tokens": 4}, prompt="hi")
    with pytest.raises(BackendUnavailable):
        run(backend(stack, base_url="http://127.0.0.1:9/v1"), request)


def test_a_forced_tool_call_comes_back_as_tool_call_deltas(stack):
    """The provider (vLLM's own server, with the same template and parser as the tiers) gets the tools."""
    from serve_app.core.generation import assembled_tool_calls

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    request = GenerationRequest("x5", {"max_tokens": 64, "temperature": 0.0},
                                messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                structured={"tools": [weather], "tool_choice": "required"})
    chunks = run(backend(stack), request)
    [call] = assembled_tool_calls(chunks)
    assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])
    assert chunks[-1].finish_reason == "tool_calls"
