"""Tools and structured outputs as an agent sees them: the `openai` SDK, unchanged, running a tool loop and
asking for JSON against the deployed stack, both tiers' real engines constraining and parsing the answers
(vLLM's hermes parser, the shipped template), on every route, streamed and not."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import error_of

pytestmark = pytest.mark.e2e

ROUTES = ["cheap", "strong", "auto"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}  # not `strict`: the arguments are constrained all the same
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
PLACE = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
         "required": ["city", "country"], "additionalProperties": False}
CONFIDENCE = {"cascade": {"mode": "confidence"}}


def routing(response) -> dict:
    return response.model_extra["routing"]


def first_turn(client, route, stream):
    kwargs = dict(model=route, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                  tools=[WEATHER, TIME], tool_choice="required", max_tokens=64, temperature=0)
    if not stream:
        return client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as events:  # the SDK reassembles the streamed call
        for _ in events:
            pass
        return events.get_final_completion()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_two_step_tool_loop_runs_on_every_route(client, route, stream):
    first = first_turn(client, route, stream)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    # The tool's result goes back with the SDK's own message, as an agent framework sends it.
    messages = [{"role": "user", "content": "What is the weather in Paris?"},
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear", "celsius": 18})}]
    final = client.chat.completions.create(model=route, messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                           max_tokens=32, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


@pytest.mark.parametrize("route", ROUTES)
def test_json_schema_answers_parse_and_validate_on_every_route(client, route):
    response = client.chat.completions.create(
        model=route, messages=[{"role": "user", "content": "Name a city in Italy and its country, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE, "strict": True}},
        max_tokens=64, temperature=0)
    jsonschema.validate(json.loads(response.choices[0].message.content), PLACE)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_speculative_route_drafts_under_a_schema_and_serves_the_strong_tiers_constrained_answer(client, stack,
                                                                                                  stream):
    """At alpha 0 and temperature 0 `auto`'s answer to a schema is the `strong` route's own, though the cheap
    tier drafted it: the strong tier's verdicts are taken under the schema."""
    assert stack.args["cascade"]["mode"] == "speculative" and stack.args["cascade"]["alpha"] == 0
    drafted = 0
    for question in ("Name a city in Spain and its country.", "Where is the Eiffel Tower? Answer as JSON.",
                     "Extract the place as JSON: I flew from Lima, the capital of Peru."):
        kwargs = dict(messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0,
                      response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE}})
        strong = client.chat.completions.create(model="strong", **kwargs).choices[0].message.content
        if stream:
            chunks = list(client.chat.completions.create(model="auto", stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            last = [c.model_extra["routing"] for c in chunks if (c.model_extra or {}).get("routing")][-1]
        else:
            auto = client.chat.completions.create(model="auto", **kwargs)
            text, last = auto.choices[0].message.content, routing(auto)
        assert text == strong
        jsonschema.validate(json.loads(text), PLACE)
        assert last["plan"].startswith("speculative") and last["served_by"] == "strong"
        drafted += last["speculation"]["drafted"]
    assert drafted > 0


def test_the_confidence_cascade_escalates_a_cheap_answer_that_calls_no_tool(client):
    """This cheap model answers in prose where a tool was due (it never calls one unprompted): the validity
    check escalates, and the answer is the strong tier's."""
    response = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER],
        max_tokens=32, temperature=0, extra_body=CONFIDENCE)
    assert routing(response)["reason"] == "invalid_no_tool_call"
    assert routing(response)["served_by"] == "strong" and routing(response)["escalated"] is True


def test_the_confidence_cascade_keeps_or_escalates_a_valid_cheap_call_by_its_confidence(client):
    first = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER],
        tool_choice="required", max_tokens=64, temperature=0, extra_body=CONFIDENCE)
    assert routing(first)["reason"] in ("confident", "low_confidence")  # valid by construction: the scorer decides
    jsonschema.validate(json.loads(first.choices[0].message.tool_calls[0].function.arguments),
                        WEATHER["function"]["parameters"])


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}, "tools.0.function"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tools": [WEATHER], "messages": [{"role": "user", "content": "Hi"},
                                       {"role": "tool", "tool_call_id": "call-9", "content": "sunny"}]},
     "messages[1].tool_call_id"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": 3}}}},
     "response_format.json_schema"),
])
def test_a_bad_tool_or_format_request_is_a_400(stack, change, param):
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], **change}
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=60)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_completions_take_a_format_too(stack):
    response = httpx.post(f"{stack.base_url}/completions", headers=stack.headers, timeout=120, json={
        "model": "strong", "prompt": "Is Paris in France? Answer:", "max_tokens": 4,
        "structured_outputs": {"choice": ["yes", "no"]}})
    assert response.json()["choices"][0]["text"] in ("yes", "no")
