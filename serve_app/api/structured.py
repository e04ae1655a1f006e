"""The OpenAI request and response fields for tools and output formats (chat `tools`, `tool_choice`,
`parallel_tool_calls`, tool calls in messages; `response_format` and vLLM's `structured_outputs` on both
endpoints), checked here so that a malformed schema or an unknown tool is a 400 before any routing.

What the fields mean to the engine is vLLM's (deployments/structured.py); what makes an answer to them
valid is serve_app.routing.validity's.
"""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator


def _check_schema(schema: dict[str, Any], param: str) -> None:
    """A JSON schema the engine can constrain to and the router can validate against (jsonschema's meta-schema)."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{param}: not a valid JSON schema: {exc.message}") from None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> FunctionDefinition:
        if self.parameters is not None:
            _check_schema(self.parameters, f"tools[{self.name}].function.parameters")
        return self


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str
    """JSON text, as the model wrote it (it may not parse: the caller's to check)."""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")  # an echoed call may carry a client SDK's own fields (its stream `index`)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> JsonSchemaFormat:
        if self.json_schema is None:
            raise ValueError("response_format.json_schema.schema: required")
        _check_schema(self.json_schema, "response_format.json_schema.schema")
        return self


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format.json_schema: required with type json_schema, and only there")
        return self


class StructuredOutputs(BaseModel):
    """Extension, vLLM's: exactly one constraint on the answer (vllm.sampling_params.StructuredOutputsParams)."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [n for n in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("structured_outputs: exactly one of json, regex, choice, grammar, json_object")
        if isinstance(self.json_, dict):
            _check_schema(self.json_, "structured_outputs.json")
        return self


class StructuredFields(BaseModel):
    """What constrains an answer's form, on either endpoint."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _one_format(self) -> StructuredFields:
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise ValueError("structured_outputs: give it or response_format, not both")
        return self

    def structured(self) -> dict[str, Any] | None:
        """The request's tools and output format, as the OpenAI body spells them (GenerationRequest.structured)."""
        body = self.model_dump(include=STRUCTURED_FIELDS, exclude_none=True, by_alias=True)
        if body.get("response_format", {}).get("type") == "text":
            del body["response_format"]
        return body or None


class ToolMessageFields(BaseModel):
    """A chat message's part in a tool loop."""

    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None
    """OpenAI's other fields of an assistant message, taken (and not used) so that a client can send a
    response's message back as it got it."""

    tool_calls: list[ToolCall] | None = None
    """An assistant message's calls (the turn before their results)."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""

    @model_validator(mode="after")
    def _shape(self) -> ToolMessageFields:
        if getattr(self, "content", None) is None and not (getattr(self, "role", None) == "assistant" and self.tool_calls):
            raise ValueError("content: required, except in an assistant message with tool_calls")
        if self.tool_calls and getattr(self, "role", None) != "assistant":
            raise ValueError("tool_calls: only in an assistant message")
        if (getattr(self, "role", None) == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool_call_id: required in a tool message, and only there")
        return self


class ToolFields(BaseModel):
    """Chat's tools, and the checks that need the whole request (a named choice among the tools, every
    tool message answering an earlier call)."""

    tools: list[Tool] | None = Field(None, min_length=1)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _tools(self) -> ToolFields:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools have the same name")
        if self.tool_choice is not None and self.tools is None:
            raise ValueError("tool_choice: requires tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice: {self.tool_choice.function.name!r} is not one of the tools ({names})")
        called: set[str] = set()
        for i, message in enumerate(getattr(self, "messages", ())):
            called.update(call.id for call in message.tool_calls or ())
            if message.role == "tool" and message.tool_call_id not in called:
                raise ValueError(f"messages[{i}].tool_call_id: {message.tool_call_id!r} answers no earlier tool call")
        return self

    @property
    def uses_tools(self) -> bool:
        """A turn of a tool loop: tools are offered, or the conversation holds calls or their results."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in getattr(self, "messages", ()))


STRUCTURED_FIELDS = {"tools", "tool_choice", "parallel_tool_calls", "response_format", "structured_outputs"}


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None
