"""The router deployment: the OpenAI HTTP API and typed Python methods over one `ApiService`.

Thin: it turns the engine versions' handles into router backends, feeds Ray's metrics, and keeps two
background loops (each tier's running replicas, rollbacks decided by other router replicas). HTTP is
`serve_app.api.http`, built per replica over the same service (`__serve_build_asgi_app__`); Python code
holding the app's handle calls `chat`, `chat_stream`, `completions` and `completions_stream` with the
protocol models directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.external import ExternalBackend
from deployments.metrics import RouterMetrics
from deployments.rollout_state import SharedRollbacks
from serve_app.api.access import KeyGate, load_api_keys
from serve_app.api.errors import BackendUnavailable, ServerError, ServingError
from serve_app.api.http import build_http_api
from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from serve_app.api.service import ApiService
from serve_app.config import AppConfig, RolloutConfig
from serve_app.generation import Backend, GenerationChunk, GenerationRequest
from serve_app.observability import tracing
from serve_app.routing.factory import build_router
from serve_app.routing.rollout import RolledBack

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


@serve.deployment(name="router")
@serve.ingress()
class Router:
    async def __init__(self, config: AppConfig | dict[str, Any], engines: dict[str, DeploymentHandle]):
        """`config` as the builder validated it (or its dict); `engines`: one handle per engine version,
        by backend label (AppConfig.engine_versions)."""
        self._config = AppConfig.model_validate(config)
        self._engines = engines
        self._engine_versions = self._config.engine_versions()  # fixed for this replica's life
        access = self._config.access
        keys = load_api_keys(access.api_keys_env, access.api_keys_file)
        if access.require_api_keys and not keys:
            raise ValueError(f"access.require_api_keys is set but no key was found in ${access.api_keys_env} "
                             f"or {access.api_keys_file}")
        gate = KeyGate(keys, access.requests_per_minute_per_key, access.burst_per_key, time.monotonic)
        logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none, authentication is off")
        backends: dict[str, Backend] = {name: _handle_backend(name, handle) for name, handle in engines.items()}
        backends |= {name: ExternalBackend(name, api) for name, api in self._config.external.items()}
        self._metrics = RouterMetrics()
        self._router = build_router(backends, self._config, time.monotonic, on_rollback=self._rolled_back,
                                     on_shadow=self._metrics.shadow)
        context = serve.get_replica_context()
        self._service = ApiService(self._config, self._router, gate, self._metrics, on_call=self._watch_replicas,
                                   before_models=lambda: self._learn_engine_speeds(None),
                                   replica=context.replica_id.unique_id)
        tracing.configure(self._config.observability.tracing, self._config.observability.service_name)
        self._metrics.backends(self._router.backend_states())
        self._replica_watch: asyncio.Task | None = None
        self._rollback_sync: asyncio.Task | None = None
        self._shared_rollbacks = SharedRollbacks(context.app_name)
        self._background: set[asyncio.Task] = set()
        # Before taking traffic: each tier's speed from its engines' warm-up. Engines still starting
        # (a first deploy) are asked again by the replica watcher; their tiers start in slow start.
        await self._learn_engine_speeds(ENGINE_INFO_WAIT_S)
        self._watch_replicas()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_api(self._service)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new rollout (serve_app.config.RolloutConfig), applied in place: in-flight requests finish on
        the version they started on, new ones follow the new split. An invalid one is refused and the
        current rollout stays (raising here would make Ray Serve replace this replica)."""
        try:
            rollouts = RolloutConfig.model_validate(user_config or {}).check(self._config)
        except ValueError as exc:
            self._service.rollout_error = str(exc)
            logger.error("rollout config refused, the current one stays: %s", exc)
            return
        self._service.rollout_error = None
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
            if self._router.runs_canary():
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
        infos = self._service.engine_infos
        missing = [label for label in self._engines if label not in infos]
        answers = await asyncio.gather(*(asyncio.wait_for(asyncio.ensure_future(self._engines[label].model_info.remote()),
                                                          wait_s) for label in missing), return_exceptions=wait_s is not None)
        for label, info in zip(missing, answers, strict=True):
            if isinstance(info, BaseException):
                continue
            infos[label] = info
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

    # Python API (DeploymentHandle): the same service as HTTP, without its access gate -------------

    async def chat(self, request: ChatCompletionRequest, priority: str = "normal",
                   timeout_s: float | None = None, trace_context: dict[str, str] | None = None) -> ChatCompletionResponse:
        """`timeout_s` bounds the whole request (every try and fallback) within the tiers' own timeouts;
        `trace_context` (W3C headers, e.g. from `opentelemetry.propagate.inject`) makes it part of the
        caller's trace."""
        return await self._service.chat(request, priority, timeout_s, trace_context)

    async def chat_stream(self, request: ChatCompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self._service.chat_stream(request, priority, timeout_s, trace_context):
            yield chunk

    async def completions(self, request: CompletionRequest, priority: str = "normal", timeout_s: float | None = None,
                          trace_context: dict[str, str] | None = None) -> CompletionResponse:
        return await self._service.completions(request, priority, timeout_s, trace_context)

    async def completions_stream(self, request: CompletionRequest, priority: str = "normal",
                                 timeout_s: float | None = None,
                                 trace_context: dict[str, str] | None = None) -> AsyncIterator[CompletionResponse]:
        async for chunk in self._service.completions_stream(request, priority, timeout_s, trace_context):
            yield chunk

    async def rollouts(self) -> dict[str, Any]:
        return await self._service.rollouts()

    async def models(self) -> ModelList:
        return await self._service.models()
