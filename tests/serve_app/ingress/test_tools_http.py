"""Tools and output formats through the real FastAPI app, service and router over fake tiers that stream
tool-call deltas as an engine's parser does: the response shapes, the `openai` SDK reassembling a streamed
call, the cascade's validity check, and each bad request's 400."""

import json
import math

import httpx
import openai
import pytest

from serve_app.api.access import KeyGate
from serve_app.api.openai_format import conversation_key
from serve_app.config import AppConfig
from serve_app.core.generation import GenerationChunk, GenerationRequest, TokenLogprob
from serve_app.ingress.http import build_http_api
from serve_app.ingress.service import ApiService
from serve_app.routing.answer_cache import cache_key
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import Clock, FakeTier, run

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


class ToolTier:
    """Calls `name` with `arguments`, streamed as vLLM's parser streams a call: the id and name first, then
    the arguments in three pieces; each token with probability `prob`."""

    def __init__(self, name="get_weather", arguments='{"city": "Paris"}', prob=0.9):
        self.name, self.arguments, self.prob = name, arguments, prob
        self.requests: list[GenerationRequest] = []

    async def __call__(self, request):
        self.requests.append(request)
        want = request.sampling.get("logprobs")
        third = math.ceil(len(self.arguments) / 3)
        deltas = [{"index": 0, "id": "call-1", "type": "function", "function": {"name": self.name}}] + [
            {"index": 0, "function": {"arguments": self.arguments[i:i + third]}}
            for i in range(0, len(self.arguments), third)]
        for i, delta in enumerate(deltas):
            yield GenerationChunk(text="", token_ids=[i], prompt_tokens=9, completion_tokens=i + 1,
                                  logprobs=None if want is None else [TokenLogprob("t", math.log(self.prob))],
                                  finish_reason="tool_calls" if i == len(deltas) - 1 else None, tool_calls=[delta])


def service(cheap, strong, parser="hermes", cascade=None) -> ApiService:
    tier = {"model": {"source": "/models/x"}, "limits": {"concurrency_slots": 4},
            "engine": {"tool_call_parser": parser}}
    config = AppConfig.model_validate({"tiers": {"cheap": tier, "strong": tier}, "cascade": cascade or {},
                                       "resilience": {"retry_attempts": 1}})
    api = ApiService(config, build_router({"cheap": cheap, "strong": strong}, config, Clock()),
                     KeyGate([KEY], None, None, Clock()))
    for name in ("cheap", "strong"):
        api.engine_started(name, {"model": f"/models/{name}", "max_model_len": 2048, "warm_up": None})
    return api


def post(api: ApiService, body: dict, path="/v1/chat/completions") -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=build_http_api(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(path, json=body, headers=AUTH)
            await response.aread()
            return response

    return run(go())


def test_a_tool_call_is_answered_in_openais_shape():
    cheap, strong = ToolTier(), ToolTier()
    response = post(service(cheap, strong), {"model": "strong", "messages": ASK, "tools": [WEATHER],
                                             "tool_choice": "required"})
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "call-1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert strong.requests[0].structured == {"tools": [WEATHER], "tool_choice": "required"}


def test_the_openai_sdk_reassembles_a_streamed_call_and_sends_the_loop_back():
    api = service(ToolTier(), ToolTier())

    async def go():
        transport = httpx.ASGITransport(app=build_http_api(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            client = openai.AsyncOpenAI(base_url="http://test/v1", api_key=KEY, http_client=http, max_retries=0)
            async with client.chat.completions.stream(model="strong", messages=ASK, tools=[WEATHER],
                                                      tool_choice="required") as stream:
                async for _ in stream:
                    pass
                first = await stream.get_final_completion()
            message = first.choices[0].message
            # The SDK's own message, echoed back with the tool's result: the next turn of the loop.
            turn = [*ASK, message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny"}]
            second = await client.chat.completions.create(model="strong", messages=turn, tools=[WEATHER])
            return first, second

    first, second = run(go())
    call = first.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call-1", "get_weather",
                                                                                 {"city": "Paris"})
    assert first.choices[0].finish_reason == "tool_calls"
    assert second.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize(("arguments", "served_by", "reason"), [
    ('{"city": "Paris"}', "cheap", "confident"),
    ('{"town": "Paris"}', "strong", "invalid_arguments_schema"),
    ('{"city": "Par', "strong", "invalid_arguments_not_json"),
])
def test_the_confidence_cascade_checks_a_cheap_call_before_its_confidence(arguments, served_by, reason):
    cheap, strong = ToolTier(arguments=arguments, prob=0.99), ToolTier()
    response = post(service(cheap, strong, cascade={"mode": "confidence", "threshold": 0.5}),
                    {"model": "auto", "messages": ASK, "tools": [WEATHER]})
    routing = response.json()["routing"]
    assert (routing["served_by"], routing["reason"], routing["escalated"]) == (served_by, reason, served_by == "strong")
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_a_cheap_answer_in_prose_where_a_call_was_due_escalates():
    cheap, strong = FakeTier(["It is", " sunny."], 0.99), ToolTier()
    response = post(service(cheap, strong, cascade={"mode": "confidence"}),
                    {"model": "auto", "messages": ASK, "tools": [WEATHER]})
    assert response.json()["routing"]["reason"] == "invalid_no_tool_call"
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_schema_answer_that_does_not_match_escalates():
    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    cheap, strong = FakeTier(['{"town": ', '"Paris"}'], 0.99), FakeTier(['{"city": ', '"Paris"}'], 0.9)
    response = post(service(cheap, strong, cascade={"mode": "confidence"}), {
        "model": "auto", "messages": ASK,
        "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": place}}})
    body = response.json()
    assert body["routing"]["reason"] == "invalid_schema" and body["routing"]["served_by"] == "strong"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris"}


def test_the_speculative_cascade_leaves_tool_calls_to_the_strong_tier():
    cheap, strong = ToolTier(), ToolTier()
    response = post(service(cheap, strong, cascade={"mode": "speculative"}),
                    {"model": "auto", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"})
    routing = response.json()["routing"]
    assert (routing["served_by"], routing["plan"]) == ("strong", "strong")
    assert routing["plan_reason"].startswith("tools")
    assert cheap.requests == []


NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}, "tools.0.function"),
    ({"tools": [WEATHER], "tool_choice": NAMED}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "messages": [*ASK, {"role": "tool", "tool_call_id": "call-9", "content": "sunny"}]},
     "messages[1].tool_call_id"),
    ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages.0"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": 3}}}},
     "response_format.json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
])
def test_a_bad_tool_or_format_request_is_a_400_naming_its_field(change, param):
    response = post(service(ToolTier(), ToolTier()), {"model": "strong", "messages": ASK, **change})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_tools_on_a_tier_without_a_tool_parser_are_a_400():
    strong = ToolTier()
    response = post(service(ToolTier(), strong, parser=None), {"model": "strong", "messages": ASK, "tools": [WEATHER]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    assert strong.requests == []
    # An output format needs no parser.
    response = post(service(FakeTier(["{}"], 0.9), FakeTier(["{}"], 0.9), parser=None),
                    {"model": "strong", "messages": ASK, "response_format": {"type": "json_object"}})
    assert response.status_code == 200


def test_a_cached_answer_is_never_served_to_other_tools_or_format():
    def key(structured):
        return cache_key("strong", GenerationRequest("r", {"max_tokens": 8}, messages=ASK, structured=structured))

    keys = {key(None), key({"tools": [WEATHER]}), key({"tools": [WEATHER], "tool_choice": "required"}),
            key({"response_format": {"type": "json_object"}})}
    assert len(keys) == 4


def test_the_turns_of_one_tool_loop_share_a_conversation_key():
    system = {"role": "system", "content": "Be brief."}
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    first = conversation_key([system, *ASK])
    assert first == conversation_key([system, *ASK, call, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    assert first != conversation_key([system, {"role": "user", "content": "Weather in Lyon?"}])
