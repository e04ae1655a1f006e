"""A request's tools and output format inside an engine replica, served with vLLM's own pieces, as its
OpenAI server serves them: its request models validate them, its parser (the tier's tool parser with
xgrammar structural tags) constrains the answer and splits it into content and tool-call deltas, and
`response_format` / `structured_outputs` become the `StructuredOutputsParams` the engine enforces.

Unlike vLLM's server, a tool's arguments are constrained to its `parameters` whether or not the tool says
`strict: true` (tool strict level `parameter`): a forced call whose arguments break the declared schema is
of no use to an agent. The vLLM import paths used here are pinned by tests/deployments/test_structured.py.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
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


GRAMMAR_TOP = 20
"""Candidates per scored position when a verdict is taken under a grammar (vLLM's default `max_logprobs`):
the best one the grammar allows is the model's constrained choice; when none is allowed, one more token is
generated among the allowed ones."""


class Grammar:
    """A request's output format compiled by vLLM's own xgrammar backend (so that it is the grammar the
    engine constrains the same request with), advanced over an answer's tokens."""

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: set[int]):
        self._matcher, self._vocab_size, self._stop_ids = matcher, vocab_size, stop_ids

    @classmethod
    def compiled(cls, backend: Any, request: GenerationRequest, stop_ids: set[int]) -> Grammar:
        """`backend`: vLLM's XgrammarBackend for this engine's tokenizer (`Grammars` builds it)."""
        from vllm.v1.structured_output.request import get_structured_output_key

        constraint = _vllm_request(request).extract_structured_outputs()
        if constraint is None:
            raise InvalidRequest("no output format to verify under", param="response_format")
        compiled = backend.compile_grammar(*get_structured_output_key(constraint), stop_token_ids=stop_ids)
        return cls(compiled.matcher, backend.vocab_size, stop_ids)

    def allows(self, token: int) -> bool:
        if not self.accept([token]):
            return False
        self.rollback(1)
        return True

    def accept(self, tokens: list[int]) -> bool:
        """Advance over `tokens` if the grammar allows every one (else stay where it was)."""
        for i, token in enumerate(tokens):
            if self._matcher.is_terminated() or not self._matcher.accept_token(token):
                self.rollback(i)
                return False
        return True

    def rollback(self, count: int) -> None:
        if count:
            self._matcher.rollback(count)

    def allowed_ids(self) -> list[int]:
        """Every token the grammar allows next (the stop tokens once it is complete)."""
        import numpy as np
        import xgrammar

        if self._matcher.is_terminated():
            return sorted(self._stop_ids)
        bitmask = xgrammar.allocate_token_bitmask(1, self._vocab_size)
        self._matcher.fill_next_token_bitmask(bitmask)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[: self._vocab_size]
        return np.flatnonzero(bits).tolist()

    def allowed_after(self, tokens: list[int]) -> list[int] | None:
        """What the grammar allows after `tokens`, or None if it forbids one of them; it stays where it was."""
        if not self.accept(tokens):
            return None
        allowed = self.allowed_ids()
        self.rollback(len(tokens))
        return allowed


BestAllowed = Callable[[int, list[int]], Awaitable[tuple[int, float]]]
"""`best_allowed(i, allowed)`: the model's own token at scored position i among `allowed`, and its log-probability."""


async def constrained_scores(rows: list[dict[int, Any]], scored: list[int], grammar: Grammar,
                             best_allowed: BestAllowed) -> tuple[list[float], list[int], list[float]]:
    """The model's verdict on `scored` under a grammar (serve_app.core.generation.Verification's scores): at
    each position its own token is the most likely the grammar allows there (among the row's `GRAMMAR_TOP`
    candidates, else `best_allowed`), and a scored token the grammar forbids has log-probability -inf, so it
    is never kept. The grammar follows the scored tokens while they are allowed; no position after a
    forbidden one can be served, and those keep the row's own top token. At temperature 0 and alpha 0 the
    kept tokens and the replacement are exactly what the engine generates under the same grammar."""
    logprobs: list[float] = []
    tops: list[int] = []
    top_logprobs: list[float] = []
    followed = 0
    for i, (row, token) in enumerate(zip(rows, scored, strict=True)):
        ranked = sorted((lp.rank, candidate, lp.logprob) for candidate, lp in row.items()
                        if lp.rank is not None and lp.rank <= GRAMMAR_TOP)
        if followed < i:  # past a forbidden token
            logprobs.append(-math.inf)
            tops.append(ranked[0][1])
            top_logprobs.append(ranked[0][2])
            continue
        best = next(((candidate, logprob) for _, candidate, logprob in ranked if grammar.allows(candidate)), None)
        if best is None:
            best = await best_allowed(i, grammar.allowed_ids())
        tops.append(best[0])
        top_logprobs.append(best[1])
        if grammar.accept([token]):
            logprobs.append(row[token].logprob)
            followed += 1
        else:
            logprobs.append(-math.inf)
    grammar.rollback(followed)
    return logprobs, tops, top_logprobs


class Grammars:
    """A replica's grammars: vLLM's xgrammar backend for its engine's tokenizer, built at its first use."""

    def __init__(self, engine: Any, tokenizer: Any):
        self._engine, self._tokenizer, self._backend = engine, tokenizer, None

    def following(self, request: GenerationRequest, served: list[int], stop_ids: set[int]) -> Grammar:
        """The request's grammar, advanced over the answer already served."""
        if self._backend is None:
            from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

            self._backend = XgrammarBackend(self._engine.vllm_config, tokenizer=self._tokenizer,
                                            vocab_size=self._engine.model_config.get_vocab_size())
        grammar = Grammar.compiled(self._backend, request, stop_ids)
        if not grammar.accept(served):
            raise InvalidRequest("the answer served so far does not keep to the request's format",
                                 param="response_format")
        return grammar
