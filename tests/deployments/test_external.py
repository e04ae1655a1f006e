"""What the external-API backend sends a provider (the e2e tests run it against vLLM's own server)."""

import pytest

from deployments.external import ExternalBackend
from serve_app.config import ExternalConfig
from serve_app.core.errors import InvalidRequest
from serve_app.core.generation import GenerationRequest

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def arguments(structured, forward=True):
    backend = ExternalBackend("backup", ExternalConfig(base_url="http://127.0.0.1:1/v1", model="m",
                                                       forward_extra_sampling=forward))
    return backend._arguments(GenerationRequest("r", {"max_tokens": 8, "top_k": 1}, messages=[], structured=structured))


def test_tools_and_formats_reach_the_provider_as_openai_fields():
    sent = arguments({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
                      "response_format": {"type": "json_object"}})
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["extra_body"] == {"top_k": 1}


def test_vllms_structured_outputs_go_in_the_extra_body_or_are_refused():
    assert arguments({"structured_outputs": {"choice": ["a"]}})["extra_body"] == {
        "top_k": 1, "structured_outputs": {"choice": ["a"]}}
    with pytest.raises(InvalidRequest):
        arguments({"structured_outputs": {"choice": ["a"]}}, forward=False)
