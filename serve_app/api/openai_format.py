"""Translate between the OpenAI protocol and the engine seam: requests to `GenerationRequest`s,
routed chunk streams to responses and stream chunks."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator

from serve_app.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    TopLogprob,
    Usage,
)
from serve_app.config import RouterConfig
from serve_app.core.generation import GenerationChunk, GenerationRequest, TokenLogprob, assembled_tool_calls
from serve_app.core.stream import RoutedStream, Routing


def generation_request(request: ChatCompletionRequest | CompletionRequest, defaults: RouterConfig,
                       session_key: str | None = None) -> GenerationRequest:
    """What the tiers are asked, with the `defaults` the request does not override; `session_key`
    (x-session-id) keeps a conversation on one version of a tier during a canary, else the OpenAI `user` does."""
    request_id, session_key = uuid.uuid4().hex, session_key or request.user
    cascade = request.cascade.model_dump(exclude_none=True) if request.cascade else None
    interval_s = request.stream_interval_s(defaults.stream_interval_ms)
    if isinstance(request, ChatCompletionRequest):
        sampling = request.sampling(request.requested_max_tokens or defaults.default_max_tokens,
                                    request.requested_logprobs)
        messages = [m.as_template_input() for m in request.messages]
        if session_key is None and request.uses_tools:
            session_key = conversation_key(messages)
        return GenerationRequest(request_id, sampling, messages=messages, session_key=session_key, cascade=cascade,
                                 structured=request.structured(), stream_interval_s=interval_s)
    sampling = request.sampling(request.requested_max_tokens, request.requested_logprobs)
    return GenerationRequest(request_id, sampling, prompt=request.prompt_text, session_key=session_key, cascade=cascade,
                             structured=request.structured(), stream_interval_s=interval_s)


def conversation_key(messages: list[dict]) -> str:
    """What every turn of one conversation shares: its messages up to and including the first user message
    (a tool loop's later turns only append to them), hashed. Keeps the turns on one version of a tier."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages) - 1)
    opening = json.dumps(messages[:first_user + 1], sort_keys=True, default=str)
    return "conversation-" + hashlib.sha256(opening.encode()).hexdigest()[:32]


def _usage(chunk: GenerationChunk, stream: RoutedStream) -> Usage:
    """Called once the stream is exhausted, when the ledger holds every attempt's cost."""
    held: dict[str, float] = {}
    for attempt in stream.ledger.attempts if stream.ledger else ():
        if attempt.replica_seconds:
            held[attempt.backend] = round(held.get(attempt.backend, 0.0) + attempt.replica_seconds, 6)
    return Usage(prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens,
                 total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
                 cost_usd=round(stream.ledger.cost_usd, 9) if stream.ledger else None, replica_seconds=held or None)


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if logprobs is None:
        return None
    return ChatLogprobs(content=[
        ChatTokenLogprob(
            token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()),
            top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top],
        )
        for lp in logprobs
    ])


def _completion_logprobs(logprobs: list[TokenLogprob] | None, offset: int) -> CompletionLogprobs | None:
    if logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs], token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[dict(lp.top) for lp in logprobs], text_offset=offsets,
    )


async def _collect(stream: RoutedStream) -> tuple[str, list[TokenLogprob] | None, GenerationChunk, list[dict]]:
    """The whole answer: its text, log-probabilities, last chunk and tool calls."""
    chunks = [chunk async for chunk in stream.chunks]
    logprobs = None
    for chunk in chunks:
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
    return "".join(chunk.text for chunk in chunks), logprobs, chunks[-1], assembled_tool_calls(chunks)


def _final_routing(stream: RoutedStream, chunk: GenerationChunk) -> Routing | None:
    """The routing again, with what a speculative cascade's answer took, on its last chunk."""
    return None if chunk.speculation is None else stream.routing.model_copy(update={"speculation": chunk.speculation})


async def chat_response(stream: RoutedStream) -> ChatCompletionResponse:
    text, logprobs, last, calls = await _collect(stream)
    message = AssistantMessage(content=text or (None if calls else ""), tool_calls=calls)
    return ChatCompletionResponse(
        model=stream.routing.served_by, usage=_usage(last, stream), routing=_final_routing(stream, last) or stream.routing,
        choices=[ChatChoice(message=message, logprobs=_chat_logprobs(logprobs), finish_reason=last.finish_reason)],
    )


async def completion_response(stream: RoutedStream) -> CompletionResponse:
    text, logprobs, last, _ = await _collect(stream)
    return CompletionResponse(
        model=stream.routing.served_by, usage=_usage(last, stream), routing=_final_routing(stream, last) or stream.routing,
        choices=[CompletionChoice(text=text, logprobs=_completion_logprobs(logprobs, 0), finish_reason=last.finish_reason)],
    )


async def chat_chunks(stream: RoutedStream, include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
    """OpenAI chat stream: a role chunk carrying the routing, content deltas, the finish reason,
    then (if asked) a usage chunk with no choices."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": stream.routing.served_by}
    yield ChatCompletionChunk(**head, routing=stream.routing,
                              choices=[ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))])
    last = None
    async for chunk in stream.chunks:
        last = chunk
        if chunk.text or chunk.finish_reason or chunk.logprobs or chunk.tool_calls:
            delta = DeltaMessage(content=chunk.text or (None if chunk.tool_calls else ""), tool_calls=chunk.tool_calls)
            yield ChatCompletionChunk(**head, routing=_final_routing(stream, chunk), choices=[ChatChunkChoice(
                delta=delta, logprobs=_chat_logprobs(chunk.logprobs), finish_reason=chunk.finish_reason,
            )])
    if include_usage and last is not None:
        yield ChatCompletionChunk(**head, choices=[], usage=_usage(last, stream))


async def completion_chunks(stream: RoutedStream, include_usage: bool) -> AsyncIterator[CompletionResponse]:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": stream.routing.served_by}
    last, offset, first = None, 0, True
    async for chunk in stream.chunks:
        last = chunk
        if chunk.text or chunk.finish_reason or chunk.logprobs:
            yield CompletionResponse(**head, routing=stream.routing if first else _final_routing(stream, chunk),
                                     choices=[CompletionChoice(
                text=chunk.text, logprobs=_completion_logprobs(chunk.logprobs, offset), finish_reason=chunk.finish_reason,
            )])
            offset, first = offset + len(chunk.text), False
    if include_usage and last is not None:
        yield CompletionResponse(**head, choices=[], usage=_usage(last, stream))
