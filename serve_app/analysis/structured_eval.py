"""How the structured eval (scripts/eval_structured.py) judges an answer: whether it is valid (the check the
cascade makes, serve_app.routing.validity), whether it is the reference (the right tool with the right
argument values, or the right fields; strings compared case-insensitively, numbers by value), and the
quality measure of its kind (valid answers for `tool_choice: auto`, where no grammar applies until a call
starts; exact match elsewhere). Pure."""

from __future__ import annotations

import json
from typing import Any

from serve_app.routing.validity import failed_check

FORMAT_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
"""An eval item's fields that go into the request as they are."""


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(value, str) and value.strip().casefold() == expected.casefold()
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        return isinstance(value, int | float) and float(value) == float(expected)
    return value == expected


def _fields_match(got: Any, expected: dict[str, Any]) -> bool:
    return isinstance(got, dict) and all(_same(got.get(key), value) for key, value in expected.items())


def exact(item: dict, answer: dict) -> bool:
    """The answer is the reference: the first call names the tool with the reference's arguments, or the
    content parses to an object with the reference's fields."""
    reference = item["reference"]
    try:
        if item["kind"] == "json_schema":
            return _fields_match(json.loads(answer["text"]), reference)
        call = answer["tool_calls"][0]["function"] if answer["tool_calls"] else None
        return call is not None and call["name"] == reference["name"] and _fields_match(
            json.loads(call["arguments"]), reference["arguments"])
    except ValueError:
        return False


def judged(item: dict, answer: dict) -> dict:
    """An answer's validity (the check the cascade makes), exact match and the eval's quality measure."""
    structured = {k: item[k] for k in FORMAT_FIELDS if k in item}
    failed = failed_check(structured, answer["text"], answer["tool_calls"])
    match = exact(item, answer)
    return {"valid": failed is None, "failed": failed, "exact": match,
            "quality": failed is None if item["kind"] == "auto" else match}
