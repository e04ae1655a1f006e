"""What the router serves, without Ray: the access gate, every request's lifecycle over the routes,
`/v1/models`, `/v1/rollouts` and `/health`. The HTTP routes (serve_app.ingress.http) and the
deployment's handle methods both call it; the deployment hands in backends built from Ray Serve
handles, the tests fakes.

It owns what the deployment learns about the engines (their model info, their warm-up speed, which
it passes on to the router's fleet) and the rollout config in force (or why the last one was refused).
"""

from __future__ import annotations

import logging
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
from serve_app.config import AppConfig, RolloutConfig
from serve_app.core.stream import RoutedStream
from serve_app.ingress.lifecycle import MetricsSink, NoMetrics, RequestLifecycle
from serve_app.routing.router import CascadeRouter

logger = logging.getLogger(__name__)


async def _nothing() -> None:
    pass


class ApiService:
    def __init__(self, config: AppConfig, router: CascadeRouter, gate: KeyGate, sink: MetricsSink | None = None,
                 before_models: Callable[[], Awaitable[None]] = _nothing, replica: str = "local"):
        """`before_models` runs before `/v1/models` answers (the deployment asks the engines not heard
        from yet for their model info)."""
        self.config, self.router, self.gate = config, router, gate
        self.sink = sink or NoMetrics()
        self.lifecycle = RequestLifecycle(router, self.sink, config.router,
                                          config.observability.tracing.record_content)
        self._engine_labels = [engine.label for engine in config.engine_versions()]
        self._engine_infos: dict[str, dict[str, Any]] = {}
        self._rollout_error: str | None = None
        self._before_models, self._replica = before_models, replica

    @property
    def max_body_bytes(self) -> int:
        return self.config.access.max_body_bytes

    # What the deployment learns ---------------------------------------------------------------------

    def engines_unheard(self) -> list[str]:
        """Engine versions whose model info has not arrived yet (still starting, or not asked)."""
        return [label for label in self._engine_labels if label not in self._engine_infos]

    def engine_started(self, label: str, info: dict[str, Any]) -> None:
        """An engine version's model info (fixed for its life); its warm-up figures, if any, are the
        tier's speed until live requests teach better."""
        self._engine_infos[label] = info
        self.router.fleet.serving(label)
        if warm_up := info.get("warm_up"):
            self.router.fleet.seed_speed(label, warm_up["ttft_s"], warm_up["tpot_s"])
            logger.info("%s: speed from its warm-up, TTFT %.3f s and TPOT %.3f s at a batch of %d", label,
                        warm_up["ttft_s"], warm_up["tpot_s"], warm_up["batch"])

    def apply_rollouts(self, user_config: dict[str, Any] | None) -> bool:
        """A new rollout config (serve_app.config.RolloutConfig), validated against the app and applied to
        the tiers; an invalid one is refused, the current one stays, and `/v1/rollouts` says why."""
        try:
            rollouts = RolloutConfig.model_validate(user_config or {}).check(self.config)
        except ValueError as exc:
            self._rollout_error = str(exc)
            logger.error("rollout config refused, the current one stays: %s", exc)
            return False
        self._rollout_error = None
        self.router.tiers.apply(rollouts)
        logger.info("rollouts applied: %s", rollouts.model_dump(exclude_defaults=True) or "every tier on its default version")
        return True

    # Requests -------------------------------------------------------------------------------------

    async def open(self, request: ChatCompletionRequest | CompletionRequest, priority: str = "normal",
                   timeout_s: float | None = None, trace_context: dict[str, str] | None = None,
                   session_key: str | None = None) -> RoutedStream:
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
        await self._before_models()
        status = self.router.tiers.status()
        by_tier = {tier: self._engine_infos[self.router.tiers.label(tier, status[tier]["stable"])]
                   for tier in self.config.tiers}
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
        return {"tiers": self.router.tiers.status(), "config_error": self._rollout_error, "replica": self._replica}

    def health(self) -> dict[str, Any]:
        """Readiness, the circuit state of each backend, and how the router sees each backend's load
        (requests in flight, the engine batch of its running replicas, its admission limit). `status` is
        `starting` while some engine version has not had a running replica yet (requests to it are refused
        with a Retry-After), `degraded` while one that ran has none (Ray Serve is replacing it; its routes
        fall back), else `ok`; `starting` lists the versions without a replica and the seconds until one
        should be up."""
        fleet = self.router.fleet
        states = fleet.states()
        self.sink.backends(states)
        waiting = fleet.starting()
        status = "starting" if fleet.never_ran() else "degraded" if waiting else "ok"
        return {"status": status, "starting": {name: round(s, 1) for name, s in waiting.items()},
                "circuits": {name: state.value for name, (state, *_) in states.items()},
                "backends": {name: {"circuit": state.value, "in_flight": in_flight, "batch": batch, "limit": limit}
                             for name, (state, in_flight, batch, limit) in states.items()}}
