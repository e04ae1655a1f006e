"""The ingress and router deployment: OpenAI HTTP API and typed Python methods over one router.

HTTP clients use the FastAPI routes; Python code holding the app's handle calls `chat`,
`chat_stream`, `completions` and `completions_stream` with the protocol models directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.external import ExternalBackend
from deployments.metrics import RouterMetrics
from deployments.rollout_state import SharedRollbacks
from serve_app.api import openai_format
from serve_app.api.access import KeyGate, load_api_keys
from serve_app.api.errors import (
    BackendUnavailable,
    InvalidRequest,
    PayloadTooLarge,
    ServerError,
    ServingError,
    error_body,
    invalid_request,
)
from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Routing,
)
from serve_app.config import AppConfig, RolloutConfig
from serve_app.generation import Backend, GenerationChunk, GenerationRequest
from serve_app.observability import telemetry, tracing
from serve_app.observability.telemetry import Ledger
from serve_app.routing.admission import PRIORITY_BUDGET
from serve_app.routing.rollout import RolledBack
from serve_app.routing.router import CascadeRouter, RoutedStream

api = FastAPI(title="serve_app", docs_url=None, redoc_url=None)
logger = logging.getLogger("ray.serve")
ENGINE_INFO_WAIT_S = 10.0
"""How long the router waits for an engine version's model_info (its warm-up figures) at a time."""


def _handle_backend(name: str, handle: DeploymentHandle) -> Backend:
    """A tier's handle as a router backend; Ray's errors become serving errors."""
    streaming = handle.options(stream=True)

    async def stream(request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        response = streaming.generate.remote(request)
        finished = False
        try:
            async for chunk in response:
                yield chunk
            finished = True
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if isinstance(cause, ServingError):
                raise cause from None
            raise ServerError(f"tier {name!r} failed: {type(cause).__name__}") from None
        except (RayError, BackPressureError) as exc:  # replica died, none left, or queue full
            raise BackendUnavailable(f"tier {name!r} is unavailable: {type(exc).__name__}") from None
        finally:
            if not finished:
                response.cancel()  # the caller went away: stop the engine's work too

    return stream


def _headers(routing: Routing, span: trace.Span) -> dict[str, str]:
    headers = {"x-route": routing.route, "x-served-by": routing.served_by,
               "x-cascade-escalated": str(routing.escalated).lower()}
    if routing.version is not None:
        headers["x-served-version"] = routing.version
    if span.get_span_context().is_valid:
        headers["x-trace-id"] = format(span.get_span_context().trace_id, "032x")
    if routing.confidence is not None:
        headers["x-cascade-confidence"] = f"{routing.confidence:.4f}"
    if routing.fallback_reason:
        headers["x-fallback-reason"] = routing.fallback_reason
    return headers


async def _sse(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except ServingError as exc:  # after the first byte the status is sent: report in-band, as vLLM does
        yield f"data: {json.dumps(error_body(exc))}\n\n"
    yield "data: [DONE]\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
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


def _timeout_header(raw: Request) -> float | None:
    value = raw.headers.get("x-request-timeout")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest("x-request-timeout must be a number of seconds", param="x-request-timeout") from None


@api.exception_handler(ServingError)
async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers())


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    error = ServerError(f"internal error: {type(exc).__name__}")
    return JSONResponse(error_body(error), status_code=error.status)


@serve.deployment(name="router")
@serve.ingress(api)
class Router:
    async def __init__(self, config: dict[str, Any], engines: dict[str, DeploymentHandle]):
        """`engines`: one handle per engine version, by backend label (AppConfig.engine_versions)."""
        self._config = AppConfig.model_validate(config)
        self._engines = engines
        self._engine_versions = self._config.engine_versions()  # fixed for this replica's life
        access = self._config.access
        keys = load_api_keys(access.api_keys_env, access.api_keys_file)
        if access.require_api_keys and not keys:
            raise ValueError(f"access.require_api_keys is set but no key was found in ${access.api_keys_env} "
                             f"or {access.api_keys_file}")
        self._gate = KeyGate(keys, access.requests_per_minute_per_key, access.burst_per_key, time.monotonic)
        logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none, authentication is off")
        backends: dict[str, Backend] = {name: _handle_backend(name, handle) for name, handle in engines.items()}
        backends |= {name: ExternalBackend(name, api) for name, api in self._config.external.items()}
        self._metrics = RouterMetrics()
        self._router = CascadeRouter(backends, self._config, time.monotonic, on_rollback=self._rolled_back,
                                     on_shadow=self._metrics.shadow)
        self._rollout_error: str | None = None
        self._engine_infos: dict[str, dict[str, Any]] = {}
        """model_info of each engine version, by label, once it answered (its model is fixed for its life)."""
        tracing.configure(self._config.observability.tracing, self._config.observability.service_name)
        self._metrics.backends(self._router.backend_states())
        self._record_content = self._config.observability.tracing.record_content
        self._replica_watch: asyncio.Task | None = None
        self._rollback_sync: asyncio.Task | None = None
        self._shared_rollbacks = SharedRollbacks(serve.get_replica_context().app_name)
        self._background: set[asyncio.Task] = set()
        # Before taking traffic: each tier's speed from its engines' warm-up. Engines still starting
        # (a first deploy) are asked again by the replica watcher; their tiers start in slow start.
        await self._learn_engine_speeds(ENGINE_INFO_WAIT_S)
        self._watch_replicas()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new rollout (serve_app.config.RolloutConfig), applied in place: in-flight requests finish on
        the version they started on, new ones follow the new split. An invalid one is refused and the
        current rollout stays (raising here would make Ray Serve replace this replica)."""
        try:
            rollouts = RolloutConfig.model_validate(user_config or {}).check(self._config)
        except ValueError as exc:
            self._rollout_error = str(exc)
            logger.error("rollout config refused, the current one stays: %s", exc)
            return
        self._rollout_error = None
        self._router.set_rollouts(rollouts)
        identities = self._router.rollout_identities()
        for tier, rollback in (await self._shared_rollbacks.apply(identities)).items():
            if self._router.adopt_rollback(tier, identities[tier], rollback):
                logger.warning("canary %s@%s stays rolled back (decided earlier): %s", tier, rollback.version, rollback.reason)
        self._metrics.rollouts(self._router.rollout_status())
        logger.info("rollouts applied: %s", rollouts.model_dump(exclude_defaults=True) or "every tier on its default version")

    def _rolled_back(self, tier: str, rollback: RolledBack) -> None:
        logger.warning("canary %s@%s rolled back to 0 %%: %s", tier, rollback.version, rollback.reason)
        self._metrics.rollouts(self._router.rollout_status())
        task = asyncio.get_running_loop().create_task(self._share(tier, self._router.rollout_identities()[tier], rollback))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _share(self, tier: str, identity: str, rollback: RolledBack) -> None:
        """Tell the other router replicas; the rollback is counted once, by the replica whose verdict holds."""
        if await self._shared_rollbacks.record(tier, identity, rollback) == rollback:
            self._metrics.rollback(tier, rollback.version)

    async def _follow_rollbacks(self) -> None:
        """Adopt the rollbacks other router replicas decide, while some tier runs a canary."""
        while True:
            if any(traffic["canary"] for traffic in self._router.rollout_status().values()):
                adopted = False
                for tier, (identity, rollback) in (await self._shared_rollbacks.current()).items():
                    if self._router.adopt_rollback(tier, identity, rollback):
                        logger.warning("canary %s@%s rolled back by another router replica: %s", tier,
                                       rollback.version, rollback.reason)
                        adopted = True
                if adopted:
                    self._metrics.rollouts(self._router.rollout_status())
            await asyncio.sleep(self._config.router.rollout_sync_s)

    def _watch_replicas(self) -> None:
        """Start (once, on the serving event loop) following each tier's running replicas and the
        rollbacks decided by other router replicas."""
        if self._replica_watch is None or self._replica_watch.done():
            self._replica_watch = asyncio.get_running_loop().create_task(self._follow_replicas())
        if self._rollback_sync is None or self._rollback_sync.done():
            self._rollback_sync = asyncio.get_running_loop().create_task(self._follow_rollbacks())

    async def _learn_engine_speeds(self, wait_s: float | None) -> None:
        """Ask the engine versions not heard from yet for their model_info (each bounded by `wait_s`;
        None: until it answers, raising its error) and seed their tiers' admission with their warm-up figures."""
        missing = [label for label in self._engines if label not in self._engine_infos]
        answers = await asyncio.gather(*(asyncio.wait_for(asyncio.ensure_future(self._engines[label].model_info.remote()),
                                                          wait_s) for label in missing), return_exceptions=wait_s is not None)
        for label, info in zip(missing, answers, strict=True):
            if isinstance(info, BaseException):
                continue
            self._engine_infos[label] = info
            if info.get("warm_up"):
                self._router.seed_speed(label, info["warm_up"]["ttft_s"], info["warm_up"]["tpot_s"])
                logger.info("%s: speed from its warm-up, TTFT %.3f s and TPOT %.3f s at a batch of %d", label,
                            info["warm_up"]["ttft_s"], info["warm_up"]["tpot_s"], info["warm_up"]["batch"])

    async def _follow_replicas(self) -> None:
        app = serve.get_replica_context().app_name
        while True:
            await self._learn_engine_speeds(ENGINE_INFO_WAIT_S)
            try:
                deployments = (await asyncio.to_thread(serve.status)).applications[app].deployments
                for engine in self._engine_versions:
                    states = deployments[engine.deployment].replica_states
                    running = sum(n for state, n in states.items() if getattr(state, "value", state) == "RUNNING")
                    self._router.set_running_replicas(engine.label, running)
                self._metrics.backends(self._router.backend_states())
            except Exception:  # the controller is busy or restarting: keep the last known capacity
                logger.warning("could not read the tiers' replica counts", exc_info=True)
            await asyncio.sleep(self._config.router.replica_poll_s)

    # Python API (DeploymentHandle) ------------------------------------------------------------

    async def _open(self, request: ChatCompletionRequest | CompletionRequest, priority: str,
                    timeout_s: float | None, trace_context: dict[str, str] | None,
                    session_key: str | None = None) -> RoutedStream:
        """Route the request inside its trace's ingress span; the span ends and the metrics are
        recorded when the answer has been consumed, or here if routing fails."""
        self._watch_replicas()
        chat = isinstance(request, ChatCompletionRequest)
        ledger = Ledger(time.monotonic(), output_text=[] if self._record_content else None)
        content = None
        if self._record_content:
            content = [m.as_template_input() for m in request.messages] if chat else request.prompt_text
        span = tracing.start_request(
            "chat" if chat else "text_completion", request.model, tracing.extract(trace_context), content,
            {"max_tokens": request.requested_max_tokens, "temperature": request.temperature,
             "top_p": request.top_p, "seed": request.seed})
        try:
            if priority not in PRIORITY_BUDGET:
                raise InvalidRequest(f"priority must be one of {sorted(PRIORITY_BUDGET)}", param="x-priority")
            if timeout_s is not None and not (0 < timeout_s < math.inf):
                raise InvalidRequest("the request timeout must be a positive number of seconds", param="x-request-timeout")
            generation = openai_format.generation_request(request, self._config.router.default_max_tokens)
            generation.session_key = session_key or generation.session_key
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                stream = await self._router.open(request.model, generation, priority, timeout_s, ledger)
        except BaseException as exc:
            telemetry.note_failure(ledger, exc)
            ledger.finished_s = time.monotonic()
            self._finish(ledger, span)
            raise
        ledger.routing = stream.routing
        stream.chunks = telemetry.watched(stream.chunks, ledger, time.monotonic, lambda done: self._finish(done, span))
        stream.span = span
        return stream

    def _finish(self, ledger: Ledger, span: trace.Span) -> None:
        try:
            self._metrics.record(ledger)
            self._metrics.backends(self._router.backend_states())
            output = None if ledger.output_text is None else "".join(ledger.output_text)
            tracing.end_request(span, ledger, output)
        except Exception:  # observability must never fail a request
            logger.exception("recording a finished request failed")

    async def chat(self, request: ChatCompletionRequest, priority: str = "normal",
                   timeout_s: float | None = None, trace_context: dict[str, str] | None = None) -> ChatCompletionResponse:
        """`timeout_s` bounds the whole request (every try and fallback) within the tiers' own timeouts;
        `trace_context` (W3C headers, e.g. from `opentelemetry.propagate.inject`) makes it part of the
        caller's trace."""
        return await openai_format.chat_response(await self._open(request, priority, timeout_s, trace_context))

    async def chat_stream(self, request: ChatCompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> AsyncIterator[ChatCompletionChunk]:
        stream = await self._open(request, priority, timeout_s, trace_context)
        async for chunk in openai_format.chat_chunks(stream, request.include_usage):
            yield chunk

    async def completions(self, request: CompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> CompletionResponse:
        return await openai_format.completion_response(await self._open(request, priority, timeout_s, trace_context))

    async def completions_stream(self, request: CompletionRequest, priority: str = "normal",
                                 timeout_s: float | None = None,
                                 trace_context: dict[str, str] | None = None) -> AsyncIterator[CompletionResponse]:
        stream = await self._open(request, priority, timeout_s, trace_context)
        async for chunk in openai_format.completion_chunks(stream, request.include_usage):
            yield chunk

    async def rollouts(self) -> dict[str, Any]:
        """Per tier: the versions serving, canary and shadow shares, the guard's figures (this router
        replica's), any rollback (whichever replica decided it), recent shadow comparisons; the last
        refused rollout config, if any; and which router replica answered."""
        self._watch_replicas()
        return {"tiers": self._router.rollout_status(), "config_error": self._rollout_error,
                "replica": serve.get_replica_context().replica_id.unique_id}

    async def models(self) -> ModelList:
        await self._learn_engine_speeds(None)
        status = self._router.rollout_status()
        labels = {(e.tier, e.version): e.label for e in self._engine_versions}
        by_tier = {tier: self._engine_infos[labels[tier, status[tier]["stable"]]] for tier in self._config.tiers}
        cascade = by_tier[self._config.cascade.strong_tier]
        cards = [ModelCard(id=name, root=info["model"], max_model_len=info["max_model_len"]) for name, info in by_tier.items()]
        shortest = min(info["max_model_len"] for info in by_tier.values())
        cards += [ModelCard(id=name, root=cascade["model"], max_model_len=shortest)
                  for name in ("auto", self._config.model_alias)]
        return ModelList(data=cards)

    # HTTP API ----------------------------------------------------------------------------------

    async def _admit(self, raw: Request, request_type: type[BaseModel]) -> BaseModel:
        """Authenticate and rate-limit first, then read and validate the body."""
        self._gate.admit(raw.headers.get("authorization"))
        body = await _read_body(raw, self._config.access.max_body_bytes)
        try:
            return request_type.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_request(exc.errors()) from None

    async def _respond(self, raw: Request, request_type, whole, chunks) -> Response:
        request = await self._admit(raw, request_type)
        stream = await self._open(request, raw.headers.get("x-priority", "normal"), _timeout_header(raw), raw.headers,
                                  raw.headers.get("x-session-id"))
        headers = _headers(stream.routing, stream.span)
        if request.stream:  # the cost is known only at the end: it is in the usage chunk, if asked for
            return StreamingResponse(_sse(chunks(stream, request.include_usage)),
                                     media_type="text/event-stream", headers=headers)
        body = (await whole(stream)).model_dump()
        headers["x-request-cost-usd"] = f"{stream.ledger.cost_usd:.9f}"
        return JSONResponse(body, headers=headers)

    @api.post("/v1/chat/completions")
    async def http_chat(self, raw: Request) -> Response:
        return await self._respond(raw, ChatCompletionRequest, openai_format.chat_response, openai_format.chat_chunks)

    @api.post("/v1/completions")
    async def http_completions(self, raw: Request) -> Response:
        return await self._respond(raw, CompletionRequest, openai_format.completion_response,
                                   openai_format.completion_chunks)

    @api.get("/v1/models")
    async def http_models(self, raw: Request) -> ModelList:
        self._gate.admit(raw.headers.get("authorization"))
        return await self.models()

    @api.get("/v1/rollouts")
    async def http_rollouts(self, raw: Request) -> dict[str, Any]:
        self._gate.admit(raw.headers.get("authorization"))
        return await self.rollouts()

    @api.get("/health")
    async def http_health(self) -> dict[str, Any]:
        """Open to all: liveness of the router, the circuit state of each backend, and how the router
        sees each backend's load (requests in flight, concurrency slots of its running replicas)."""
        self._watch_replicas()
        states = self._router.backend_states()
        self._metrics.backends(states)
        return {"status": "ok", "circuits": self._router.breaker_states(),
                "backends": {name: {"circuit": state.value, "in_flight": in_flight, "slots": slots}
                             for name, (state, in_flight, slots) in states.items()}}
