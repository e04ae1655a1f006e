"""The validity check of a structured answer (serve_app.routing.validity), over hand-written answers."""

import pytest

from serve_app.routing.validity import failed_check

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
PLACE = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def call(name, arguments):
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(("structured", "content", "calls", "failed"), [
    (None, "anything", [], None),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"city": "Paris"}')], None),
    ({"tools": [WEATHER, TIME], "tool_choice": "required"}, "", [call("get_time", "{}")], None),
    ({"tools": [WEATHER], "tool_choice": "required"}, "It is sunny.", [], "no_tool_call"),
    ({"tools": [WEATHER]}, "It is sunny.", [], "no_tool_call"),  # auto: prose where a call was due escalates
    ({"tools": [WEATHER], "tool_choice": "none"}, "It is sunny.", [], None),
    ({"tools": [WEATHER]}, "", [call("get_wether", '{"city": "Paris"}')], "unknown_tool"),
    ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "",
     [call("get_weather", '{"city": "Paris"}')], "wrong_tool"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '"Paris"}')], "arguments_not_json"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '"Paris"')], "arguments_schema"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"town": "Paris"}')], "arguments_schema"),
    ({"tools": [WEATHER]}, "", [call("get_weather", '{"city": "Paris"}'), call("get_weather", "{}")], "arguments_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PLACE}}}, '{"city": "Paris"}', [], None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PLACE}}}, '{"city": 7}', [], "schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PLACE}}}, '{"city": "Par', [], "not_json"),
    ({"response_format": {"type": "json_object"}}, "[1, 2]", [], "schema"),
    ({"response_format": {"type": "json_object"}}, '{"a": 1}', [], None),
    ({"structured_outputs": {"json": PLACE}}, '{"city": "Lyon"}', [], None),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, "maybe", [], "choice"),
    ({"structured_outputs": {"regex": r"\d{3}"}}, "123", [], None),
    ({"structured_outputs": {"regex": r"\d{3}"}}, "12a", [], "regex"),
    ({"structured_outputs": {"grammar": "root ::= 'a'"}}, "b", [], None),  # the engine's to enforce
    # auto with a format: content in the format is an answer too
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, '{"a": 1}', [], None),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "prose", [], "not_json"),
])
def test_each_check(structured, content, calls, failed):
    assert failed_check(structured, content, calls) == failed
