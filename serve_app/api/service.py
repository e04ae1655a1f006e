"""What the router serves, without Ray: the access gate, every request's lifecycle over the routes,
`/v1/models`, `/v1/rollouts` and `/health`. The HTTP routes (serve_app.api.http) and the
deployment's handle methods both call it; the deployment hands in backends built from Ray Serve
handles, the tests fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve_app.api import openai_format
from serve_app.api.access import KeyGate
from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from serve_app.config import AppConfig
from serve_app.observability.lifecycle import MetricsSink, NoMetrics, RequestLifecycle
from serve_app.routing.router import CascadeRouter
from serve_app.routing.stream import RoutedStream


async def _nothing() -> None:
    pass


class ApiService:
    def __init__(self, config: AppConfig, router: CascadeRouter, gate: KeyGate, sink: MetricsSink | None = None,
                 on_call: Callable[[], None] = lambda: None,
                 before_models: Callable[[], Awaitable[None]] = _nothing, replica: str = "local"):
        """`on_call` runs as every call comes in (the deployment restarts its background loops there);
        `before_models` runs before `/v1/models` answers (it gathers the engines' model info)."""
        self.config, self.router, self.gate = config, router, gate
        self.sink = sink or NoMetrics()
        self.lifecycle = RequestLifecycle(router, self.sink, config.router.default_max_tokens,
                                          config.observability.tracing.record_content)
        self.engine_infos: dict[str, dict[str, Any]] = {}
        """model_info of each engine version by backend label, once it answered (fixed for its life)."""
        self.rollout_error: str | None = None
        """Why the last rollout config was refused, while the one before it stays."""
        self._on_call, self._before_models, self._replica = on_call, before_models, replica

    @property
    def max_body_bytes(self) -> int:
        return self.config.access.max_body_bytes

    async def open(self, request: ChatCompletionRequest | CompletionRequest, priority: str = "normal",
                   timeout_s: float | None = None, trace_context: dict[str, str] | None = None,
                   session_key: str | None = None) -> RoutedStream:
        self._on_call()
        return await self.lifecycle.open(request, priority, timeout_s, trace_context, session_key)

    async def chat(self, request: ChatCompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                   trace_context: dict[str, str] | None = None) -> ChatCompletionResponse:
        return await openai_format.chat_response(await self.open(request, priority, timeout_s, trace_context))

    async def chat_stream(self, request: ChatCompletionRequest, priority: str = "normal",
                          timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> AsyncIterator[ChatCompletionChunk]:
        stream = await self.open(request, priority, timeout_s, trace_context)
        async for chunk in openai_format.chat_chunks(stream, request.include_usage):
            yield chunk

    async def completions(self, request: CompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> CompletionResponse:
        return await openai_format.completion_response(await self.open(request, priority, timeout_s, trace_context))

    async def completions_stream(self, request: CompletionRequest, priority: str = "normal",
                                 timeout_s: float | None = None,
                                 trace_context: dict[str, str] | None = None) -> AsyncIterator[CompletionResponse]:
        stream = await self.open(request, priority, timeout_s, trace_context)
        async for chunk in openai_format.completion_chunks(stream, request.include_usage):
            yield chunk

    async def models(self) -> ModelList:
        """Each tier's stable version's model, and the cascade routes (the strong tier's model, the
        shortest context of the tiers)."""
        self._on_call()
        await self._before_models()
        status = self.router.rollout_status()
        by_tier = {tier: self.engine_infos[self.router.label(tier, status[tier]["stable"])] for tier in self.config.tiers}
        cascade = by_tier[self.config.cascade.strong_tier]
        cards = [ModelCard(id=name, root=info["model"], max_model_len=info["max_model_len"])
                 for name, info in by_tier.items()]
        shortest = min(info["max_model_len"] for info in by_tier.values())
        cards += [ModelCard(id=name, root=cascade["model"], max_model_len=shortest)
                  for name in ("auto", self.config.model_alias)]
        return ModelList(data=cards)

    async def rollouts(self) -> dict[str, Any]:
        """Per tier: the versions serving, canary and shadow shares, the guard's figures (this router
        replica's), any rollback (whichever replica decided it), recent shadow comparisons; the last
        refused rollout config, if any; and which router replica answered."""
        self._on_call()
        return {"tiers": self.router.rollout_status(), "config_error": self.rollout_error, "replica": self._replica}

    def health(self) -> dict[str, Any]:
        """Liveness, the circuit state of each backend, and how the router sees each backend's load
        (requests in flight, concurrency slots of its running replicas)."""
        self._on_call()
        states = self.router.backend_states()
        self.sink.backends(states)
        return {"status": "ok", "circuits": self.router.breaker_states(),
                "backends": {name: {"circuit": state.value, "in_flight": in_flight, "slots": slots}
                             for name, (state, in_flight, slots) in states.items()}}
