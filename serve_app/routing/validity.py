"""Whether a structured answer is valid: the check a cascade makes before it trusts a cheap answer with
tools or an output format, since such an answer can be checked rather than guessed at.

In order: a forced call was made, each call names a declared tool (the forced one, if named) with
arguments that parse as JSON and match the tool's `parameters`, and content meant to be JSON parses
and matches its schema (or is one of the `choice`s, or matches the `regex`). With tools offered and
`tool_choice: auto`, an answer that calls none is escalated too (`no_tool_call`): a small model's usual
failure is prose where a call was due, and the strong tier decides whether one is. `grammar`
constraints are the engine's to enforce and are not checked again here. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema


def _matches(value: Any, schema: dict[str, Any] | None) -> bool:
    if schema is None:
        return True
    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


def _call_failure(call: dict[str, Any], tools: dict[str, dict | None], forced: str | None) -> str | None:
    name = call["function"]["name"]
    if name not in tools:
        return "unknown_tool"
    if forced is not None and name != forced:
        return "wrong_tool"
    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        return "arguments_not_json"
    return None if _matches(arguments, tools[name]) else "arguments_schema"


def _content_failure(structured: dict[str, Any], content: str) -> str | None:
    fmt, outputs = structured.get("response_format") or {}, structured.get("structured_outputs") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema")
    elif isinstance(outputs.get("json"), dict):
        schema = outputs["json"]
    elif isinstance(outputs.get("json"), str):
        schema = json.loads(outputs["json"])
    elif fmt.get("type") == "json_object" or outputs.get("json_object"):
        schema = {"type": "object"}
    elif outputs.get("choice") is not None:
        return None if content in outputs["choice"] else "choice"
    elif outputs.get("regex") is not None:
        return None if re.fullmatch(outputs["regex"], content) else "regex"
    else:
        return None
    try:
        value = json.loads(content)
    except ValueError:
        return "not_json"
    return None if _matches(value, schema) else "schema"


def failed_check(structured: dict[str, Any] | None, content: str, calls: list[dict[str, Any]]) -> str | None:
    """The first check a whole answer (its content and its tool calls) fails, or None if it is valid.
    `structured`: the request's tools and format (serve_app.core.generation.GenerationRequest.structured)."""
    if not structured:
        return None
    tools = {tool["function"]["name"]: tool["function"].get("parameters") for tool in structured.get("tools") or ()}
    choice = structured.get("tool_choice") or ("auto" if tools else "none")
    if tools and choice != "none":
        forced = choice["function"]["name"] if isinstance(choice, dict) else None
        if not calls:
            has_format = structured.get("response_format", {}).get("type", "text") != "text" or structured.get(
                "structured_outputs")
            return _content_failure(structured, content) if choice == "auto" and has_format else "no_tool_call"
        for call in calls:
            if (failure := _call_failure(call, tools, forced)) is not None:
                return failure
        return None
    return _content_failure(structured, content)
