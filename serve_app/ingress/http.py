"""The OpenAI HTTP API over an `ApiService`: a FastAPI app built per router replica.

Authentication and the body-size bound come before parsing; every error, raised anywhere, leaves as
the OpenAI envelope with its status (and `Retry-After` where it has one); a stream that fails after
its first byte reports the error in-band, as vLLM's server does, then `[DONE]`. A stream's events are
written at most once per its stream interval, each write holding every event ready by then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from serve_app.api import openai_format
from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest, ModelList
from serve_app.core.errors import (
    InvalidRequest,
    PayloadTooLarge,
    ServerError,
    ServingError,
    error_body,
    invalid_request,
)
from serve_app.core.stream import RoutedStream, Routing, coalesced
from serve_app.ingress.service import ApiService


def response_headers(routing: Routing, span: trace.Span | None) -> dict[str, str]:
    headers = {"x-route": routing.route, "x-served-by": routing.served_by,
               "x-cascade-escalated": str(routing.escalated).lower()}
    if routing.version is not None:
        headers["x-served-version"] = routing.version
    if span is not None and span.get_span_context().is_valid:
        headers["x-trace-id"] = format(span.get_span_context().trace_id, "032x")
    if routing.confidence is not None:
        headers["x-cascade-confidence"] = f"{routing.confidence:.4f}"
    if routing.fallback_reason:
        headers["x-fallback-reason"] = routing.fallback_reason
    if routing.plan:
        headers["x-cascade-plan"] = routing.plan
    return headers


async def server_sent_events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except ServingError as exc:  # after the first byte the status is sent: report in-band, as vLLM does
        yield f"data: {json.dumps(error_body(exc))}\n\n"
    yield "data: [DONE]\n\n"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}.")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    return bytes(body)


def timeout_header(raw: Request) -> float | None:
    value = raw.headers.get("x-request-timeout")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest("x-request-timeout must be a number of seconds", param="x-request-timeout") from None


async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers())


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    error = ServerError(f"internal error: {type(exc).__name__}")
    return JSONResponse(error_body(error), status_code=error.status)


def build_http_api(service: ApiService) -> FastAPI:
    api = FastAPI(title="serve_app", docs_url=None, redoc_url=None)
    api.add_exception_handler(ServingError, _serving_error)
    api.add_exception_handler(Exception, _unexpected_error)

    async def admit(raw: Request, request_type: type[BaseModel]) -> Any:
        """Authenticate and rate-limit first, then read and validate the body."""
        service.gate.admit(raw.headers.get("authorization"))
        body = await read_body(raw, service.max_body_bytes)
        try:
            return request_type.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_request(exc.errors()) from None

    async def respond(raw: Request, request_type: type[BaseModel], whole: Callable[[RoutedStream], Awaitable[BaseModel]],
                      chunks: Callable[[RoutedStream, bool], AsyncIterator[BaseModel]]) -> Response:
        request = await admit(raw, request_type)
        stream = await service.open(request, raw.headers.get("x-priority", "normal"), timeout_header(raw), raw.headers,
                                    raw.headers.get("x-session-id"))
        headers = response_headers(stream.routing, stream.span)
        if request.stream:  # the cost is known only at the end: it is in the usage chunk, if asked for
            events = server_sent_events(chunks(stream, request.include_usage))
            interval_s = request.stream_interval_s(service.config.router.stream_interval_ms)
            return StreamingResponse(coalesced(events, interval_s), media_type="text/event-stream", headers=headers)
        body = (await whole(stream)).model_dump()
        headers["x-request-cost-usd"] = f"{stream.ledger.cost_usd:.9f}"
        return JSONResponse(body, headers=headers)

    @api.post("/v1/chat/completions")
    async def chat(raw: Request) -> Response:
        return await respond(raw, ChatCompletionRequest, openai_format.chat_response, openai_format.chat_chunks)

    @api.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        return await respond(raw, CompletionRequest, openai_format.completion_response, openai_format.completion_chunks)

    @api.get("/v1/models")
    async def models(raw: Request) -> ModelList:
        service.gate.admit(raw.headers.get("authorization"))
        return await service.models()

    @api.get("/v1/rollouts")
    async def rollouts(raw: Request) -> dict[str, Any]:
        service.gate.admit(raw.headers.get("authorization"))
        return await service.rollouts()

    @api.get("/health")
    async def health() -> JSONResponse:
        """Open to all. 503 while the app is starting (a tier has not had a running replica yet)."""
        body = service.health()
        return JSONResponse(body, status_code=503 if body["status"] == "starting" else 200)

    return api
