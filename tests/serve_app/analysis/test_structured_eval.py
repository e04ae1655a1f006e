"""The structured eval's judgement of an answer (serve_app/analysis/structured_eval.py), and its committed data set."""

import json
from pathlib import Path

from serve_app.analysis.structured_eval import exact, judged

DATA = Path(__file__).resolve().parents[3] / "scripts" / "data" / "structured_eval.jsonl"

WEATHER_ITEM = {"kind": "tool_choice", "tool_choice": "required",
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city"]}}}],
                "reference": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}


def call(name, arguments):
    return {"text": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_a_call_matches_its_reference_by_tool_and_argument_values():
    assert exact(WEATHER_ITEM, call("get_weather", '{"city": "paris", "unit": "Celsius", "extra": 1}'))
    assert not exact(WEATHER_ITEM, call("get_weather", '{"city": "Lyon", "unit": "celsius"}'))
    assert not exact(WEATHER_ITEM, call("get_time", '{"city": "Paris", "unit": "celsius"}'))
    assert not exact(WEATHER_ITEM, call("get_weather", '{"city": "Par'))
    assert not exact(WEATHER_ITEM, {"text": "Paris", "tool_calls": []})


def test_json_answers_match_by_field_and_numbers_by_value():
    item = {"kind": "json_schema", "reference": {"product": "lamp", "price": 25, "quantity": 8}}
    assert exact(item, {"text": '{"product": "Lamp", "price": 25.0, "quantity": 8}', "tool_calls": []})
    assert not exact(item, {"text": '{"product": "lamp", "price": "25", "quantity": 8}', "tool_calls": []})


def test_auto_answers_are_judged_by_validity_the_others_by_exact_match():
    auto = {**WEATHER_ITEM, "kind": "auto", "tool_choice": "auto"}
    prose = {"text": "It is sunny.", "tool_calls": []}
    assert judged(auto, prose) == {"valid": False, "failed": "no_tool_call", "exact": False, "quality": False}
    wrong_city = call("get_weather", '{"city": "Lyon"}')
    assert judged(auto, wrong_city)["quality"] and not judged(WEATHER_ITEM, wrong_city)["quality"]


def test_the_committed_set_has_over_a_hundred_prompts_of_each_kind_with_references():
    items = [json.loads(line) for line in Path(DATA).read_text().splitlines() if line.strip()]
    assert len(items) >= 100 and len({item["id"] for item in items}) == len(items)
    assert {item["kind"] for item in items} == {"tool_choice", "arguments", "json_schema", "auto"}
    assert all(item["reference"] for item in items)
