"""A request's tools and output format inside an engine replica, served with vLLM's own pieces, as its
OpenAI server serves them: its request models validate them, its parser (the tier's tool parser with
xgrammar structural tags) constrains the answer and splits it into content and tool-call deltas, and
`response_format` / `structured_outputs` become the `StructuredOutputsParams` the engine enforces.

Unlike vLLM's server, a tool's arguments are constrained to its `parameters` whether or not the tool says
`strict: true` (tool strict level `parameter`): a forced call whose arguments break the declared schema is
of no use to an agent. The vLLM import paths used here are pinned by tests/deployments/test_structured.py.
"""

from __future__ import annotations

from typing import Any

from serve_app.core.errors import InvalidRequest
from serve_app.core.generation import GenerationRequest

TOOL_STRICT_LEVEL = "parameter"
"""vLLM's `--tool-strict-level`: `parameter` pins every tool's arguments to its schema, as if it were strict."""


def parser_class(name: str, tokenizer: Any) -> type:
    """vLLM's parser for the tier's `engine.tool_call_parser` (e.g. hermes), checked against its registry and
    the tier's tokenizer when the replica starts."""
    from vllm.parser.parser_manager import ParserManager
    from vllm.tool_parsers import ToolParserManager

    if name not in (known := ToolParserManager.list_registered()):
        raise ValueError(f"engine.tool_call_parser: {name!r} is not one of vLLM's tool parsers {sorted(known)}")
    return ParserManager.get_parser(tool_parser_name=name, enable_auto_tools=True, tokenizer=tokenizer,
                                    tool_strict_level=TOOL_STRICT_LEVEL)


def _vllm_request(request: GenerationRequest) -> Any:
    """The request as vLLM's own OpenAI request model reads it (its validation is the engine's)."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.exceptions import VLLMClientError

    try:
        if request.messages is not None:
            return ChatCompletionRequest.model_validate({"model": "-", "messages": request.messages,
                                                         **(request.structured or {})})
        return CompletionRequest.model_validate({"model": "-", "prompt": request.prompt, **(request.structured or {})})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, error['loc']))}: {error['msg']}",
                             param=str(error["loc"][0]) if error["loc"] else None) from None
    except (VLLMClientError, ValueError) as exc:  # VLLMValidationError is a VLLMClientError
        raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None


class StructuredAnswer:
    """One request's tools and format: what the engine is given for it, and its answer's deltas parsed."""

    def __init__(self, request: GenerationRequest, tokenizer: Any, parser: type | None, model_config: Any):
        self._request = _vllm_request(request)
        self.tools: list[dict[str, Any]] | None = request.tools
        self._parser = None
        if self.tools:
            if parser is None:
                raise InvalidRequest("tools: this model tier has no tool parser (engine.tool_call_parser)",
                                     param="tools")
            self._parser = parser(tokenizer, self._request.tools, chat_template_kwargs={}, model_config=model_config)
            self._request = self._parser.adjust_request(self._request)
        self._named = not isinstance(getattr(self._request, "tool_choice", None), str | None)  # a named function
        self._called = False

    def sampling(self) -> dict[str, Any]:
        """SamplingParams keyword arguments over the request's own: the constraint, and what the parser needs
        (a tool parser keeps the special tokens that mark a call)."""
        extra: dict[str, Any] = {}
        if (constraint := self._request.extract_structured_outputs()) is not None:
            extra["structured_outputs"] = constraint
        if self._parser is not None:
            extra["skip_special_tokens"] = self._request.skip_special_tokens
        return extra

    def delta(self, text: str, token_ids: list[int], prompt_ids: list[int],
              finished: bool) -> tuple[str, list[dict[str, Any]] | None]:
        """One engine delta as the client sees it: its content, and its tool-call deltas (OpenAI's shape)."""
        if self._parser is None:
            return text, None
        message = self._parser.parse_delta(text, token_ids, self._request, prompt_ids, finished=finished)
        if message is None:
            return "", None
        calls = [call.model_dump(exclude_none=True) for call in message.tool_calls or ()] or None
        self._called = self._called or bool(calls)
        return message.content or "", calls

    def finish_reason(self, reason: str | None) -> str | None:
        """vLLM's: an answer that called a tool of its own choosing (auto, required) finished with `tool_calls`."""
        return "tool_calls" if reason == "stop" and self._called and not self._named else reason
