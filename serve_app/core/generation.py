"""The seam between the router and an engine: what a tier is asked to generate and what it streams back.

Plain dataclasses: cheap to pickle across Ray Serve handles, no Ray or vLLM import. `sampling` maps
one to one onto vLLM's `SamplingParams` keyword arguments, so every option the engine supports
reaches it without being re-declared here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    sampling: dict[str, Any]
    prompt: str | None = None
    """Raw completion prompt; exactly one of `prompt` and `messages` is set."""
    messages: list[dict[str, Any]] | None = None
    """Chat messages; the engine applies its own model's chat template."""
    session_key: str | None = None
    """Keeps a conversation on one version of a tier during a canary (x-session-id, else the OpenAI `user`)."""
    trace_context: dict[str, str] = field(default_factory=dict)
    """W3C trace headers (`traceparent`, ...) of the router's attempt span, so the engine's span joins the trace."""
    cascade: dict[str, Any] | None = None
    """The request's own cascade settings (serve_app.api.protocol.CascadeOptions), over the config's."""
    prefix_token_ids: list[int] | None = None
    """Answer tokens already served (a speculative cascade's): the engine continues after the templated
    prompt followed by these ids, never re-tokenised text."""
    verify_token_ids: list[int] | None = None
    """Score these tokens instead of generating: one prefill over prompt + prefix + these, answered by a
    single chunk with a `Verification` and one token of the engine's own after them."""
    verify_text: str | None = None
    """Score this text in the engine's own tokens (for a tier whose tokenizer is not the answer's);
    as `verify_token_ids` otherwise."""
    stop_below_logprob: float | None = None
    """A draft: the engine ends the answer after the first token it samples with a log-probability below
    this (the stream just ends, without a finish reason). Needs `logprobs` in `sampling`."""
    structured: dict[str, Any] | None = None
    """The request's tools and output format, as the OpenAI body spells them (`tools`, `tool_choice`,
    `parallel_tool_calls`, `response_format`, vLLM's `structured_outputs`); None for free text."""
    stream_interval_s: float = 0.0
    """The engine replica sends at most one message per interval, holding every token ready by then (the
    first at once); 0: a message per engine step (serve_app.config.RouterConfig.stream_interval_ms)."""

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return (self.structured or {}).get("tools")

    def prefix_text(self) -> str:
        """The prompt as text, in the order the engine templates it (each message's role, then its content):
        what a prefix-aware request router matches between requests."""
        if self.messages is None:
            return self.prompt or ""
        return "".join(f"<{message.get('role')}>{message.get('content') or ''}" for message in self.messages)


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Verification:
    """A model's verdict on tokens it was asked to score (`GenerationRequest.verify_token_ids`).

    For every scored position i: the log-probability the model gives the scored token (`logprobs[i]`)
    and its own most likely token there (`top_ids[i]`, `top_logprobs[i]`). `texts[k]` is the text that
    serving the first k scored tokens followed by the model's own token at position k adds to the
    answer, for k = 0..n; the own token at n is the one generated after all of them (`ids[n]`), so
    `ids` are the candidates `top_ids + [generated]`; `stops[k]` says whether that candidate ends the
    answer (an end-of-sequence or stop token id)."""

    logprobs: tuple[float, ...]
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]
    ids: tuple[int, ...]
    texts: tuple[str, ...]
    stops: tuple[bool, ...]


@dataclass(slots=True)
class GenerationChunk:
    """One streamed delta. Token counts are cumulative, so the last chunk carries the usage."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    replica_seconds: float = 0.0
    """Cumulative share of an engine replica the request has held (serve_app.observability.metering); 0 from an API."""
    verification: Verification | None = None
    """The answer to a scoring request (`GenerationRequest.verify_token_ids`)."""
    speculation: dict[str, int] | None = None
    """On a speculative cascade's last chunk: drafted, accepted and replaced tokens, verification passes."""
    tool_calls: list[dict[str, Any]] | None = None
    """Tool-call deltas in OpenAI's streamed shape (`index`, then `id`, `type` and `function.name` on a
    call's first delta, `function.arguments` in pieces); `text` is then the answer's content only."""
    cached_tokens: int = 0
    """Prompt tokens the engine's prefix cache held."""


@dataclass(slots=True)
class Accepted:
    """Yielded first by an engine replica the moment it takes a request, before any work: tells the
    router a live replica has it, so a request nobody takes can be failed over quickly."""


Backend = Callable[[GenerationRequest], AsyncIterator[Accepted | GenerationChunk]]
"""A tier as the router sees it: a function returning an async stream of chunks, optionally
preceded by one `Accepted`."""


def assembled_tool_calls(chunks: Iterable[GenerationChunk | dict[str, Any]]) -> list[dict[str, Any]]:
    """The whole tool calls a stream's deltas make (given as its chunks, or as the deltas themselves), as a
    client SDK reassembles them: by `index`, the first `id`, `type` and name, the arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in [chunk] if isinstance(chunk, dict) else chunk.tool_calls or ():
            call = calls.setdefault(delta.get("index", 0), {"id": None, "type": "function",
                                                             "function": {"name": "", "arguments": ""}})
            call["id"] = call["id"] or delta.get("id")
            function = delta.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]
