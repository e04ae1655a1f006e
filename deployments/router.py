"""The router deployment: the OpenAI HTTP API and typed Python methods over one `ApiService`.

Thin: it turns the engine versions' handles into router backends, feeds Ray's metrics, and keeps two
background loops (each tier's running replicas, rollbacks decided by other router replicas). HTTP is
`serve_app.ingress.http`, built per replica over the same service (`__serve_build_asgi_app__`); Python code
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
from grpc.aio import AioRpcError
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.external import ExternalBackend
from deployments.metrics import RouterMetrics
from deployments.rollout_state import SharedRollbacks
from serve_app.api.access import KeyGate, load_api_keys
from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from serve_app.config import AppConfig
from serve_app.core.errors import BackendUnavailable, Overloaded, ServerError, ServingError
from serve_app.core.generation import Backend, GenerationChunk, GenerationRequest
from serve_app.ingress.http import build_http_api
from serve_app.ingress.service import ApiService
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
        except BackPressureError:  # every replica's queue is full: overload, not a fault of the tier
            raise Overloaded(f"tier {name!r} is at capacity: its replicas' queues are full",
                             retry_after_s=1.0) from None
        except (RayError, AioRpcError) as exc:  # replica died, or none left (gRPC: throughput mode)
            raise BackendUnavailable(f"tier {name!r} is unavailable: {type(exc).__name__}") from None
        finally:
            if not finished:
                response.cancel()  # the caller went away: stop the engine's work too

    return stream


ROLLBACK_SYNC_S = 2.0
"""How often a router replica reads the canary rollbacks other replicas decided (while a canary runs)."""
REPLICA_POLL_S = 10.0
"""How often the router reads each tier's running replicas (its capacity) from the Serve controller. Each
read makes the controller build every deployment's details, so it is not free: replicas take tens of
seconds to start, and a lost one is caught per request by the dispatch timeout meanwhile."""
STARTING_POLL_S = 1.0
"""The same while some engine version has not had a running replica yet (its requests are refused meanwhile)."""


@serve.deployment(name="router")
@serve.ingress()
class Router:
    async def __init__(self, config: AppConfig | dict[str, Any], engines: dict[str, DeploymentHandle]):
        """`config` as the builder validated it (or its dict); `engines`: one handle per engine version,
        by backend label (AppConfig.engine_versions)."""
        self._config = AppConfig.model_validate(config)
        self._engines = engines
        self._engine_versions = self._config.engine_versions()  # fixed for this replica's life
        self._metrics = RouterMetrics()
        self._router = build_router(self._backends(), self._config, time.monotonic, on_rollback=self._rolled_back,
                                    on_shadow=self._metrics.shadow)
        context = serve.get_replica_context()
        self._service = ApiService(self._config, self._router, self._gate(), self._metrics,
                                   before_models=lambda: self._learn_engines(None), replica=context.replica_id.unique_id)
        tracing.configure(self._config.observability.tracing)
        # No engine is taken as running until it answers or Ray Serve says so: requests meanwhile are
        # refused as starting, not counted against the tiers' breakers.
        for engine in self._engine_versions:
            self._router.fleet.starts(engine.label)
        self._metrics.backends(self._router.fleet.states())
        self._shared_rollbacks = SharedRollbacks(context.app_name)
        self._background: set[asyncio.Task] = set()
        # Before taking traffic: each tier's speed from its engines' warm-up. Engines still starting
        # (a first deploy) are asked again by the replica watcher; their tiers start in slow start.
        await self._learn_engines(ENGINE_INFO_WAIT_S)
        # Started once, on the event loop that serves this replica's requests; each survives its errors.
        self._spawn(self._follow_replicas())
        self._spawn(self._follow_rollbacks())

    def _gate(self) -> KeyGate:
        access = self._config.access
        keys = load_api_keys(access.api_keys_env, access.api_keys_file)
        if access.require_api_keys and not keys:
            raise ValueError(f"access.require_api_keys is set but no key was found in ${access.api_keys_env} "
                             f"or {access.api_keys_file}")
        logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none, authentication is off")
        return KeyGate(keys, access.requests_per_minute_per_key, access.burst_per_key, time.monotonic)

    def _backends(self) -> dict[str, Backend]:
        backends: dict[str, Backend] = {name: _handle_backend(name, handle) for name, handle in self._engines.items()}
        return backends | {name: ExternalBackend(name, api) for name, api in self._config.external.items()}

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_api(self._service)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new rollout (serve_app.config.RolloutConfig), applied in place: in-flight requests finish on
        the version they started on, new ones follow the new split. An invalid one is refused and the
        current rollout stays (raising here would make Ray Serve replace this replica)."""
        if not self._service.apply_rollouts(user_config):
            return
        tiers = self._router.tiers
        identities = tiers.identities()
        for tier, rollback in (await self._shared_rollbacks.apply(identities)).items():
            if tiers.adopt(tier, identities[tier], rollback):
                logger.warning("canary %s@%s stays rolled back (decided earlier): %s", tier, rollback.version, rollback.reason)
        self._metrics.rollouts(tiers.status())

    def _rolled_back(self, tier: str, rollback: RolledBack) -> None:
        logger.warning("canary %s@%s rolled back to 0 %%: %s", tier, rollback.version, rollback.reason)
        self._metrics.rollouts(self._router.tiers.status())
        self._spawn(self._share(tier, self._router.tiers.identities()[tier], rollback))

    async def _share(self, tier: str, identity: str, rollback: RolledBack) -> None:
        """Tell the other router replicas; the rollback is counted once, by the replica whose verdict holds.
        When another replica's verdict came first, this replica takes it instead of its own."""
        kept = await self._shared_rollbacks.record(tier, identity, rollback)
        if kept == rollback:
            self._metrics.rollback(tier, rollback.version)
        elif kept is not None and self._router.tiers.adopt(tier, identity, kept):
            self._metrics.rollouts(self._router.tiers.status())

    async def _follow_rollbacks(self) -> None:
        """Adopt the rollbacks other router replicas decide, while some tier runs a canary."""
        tiers = self._router.tiers
        while True:
            try:
                if tiers.runs_canary():
                    adopted = False
                    for tier, (identity, rollback) in (await self._shared_rollbacks.current()).items():
                        if tiers.adopt(tier, identity, rollback):
                            logger.warning("canary %s@%s rolled back by another router replica: %s", tier,
                                           rollback.version, rollback.reason)
                            adopted = True
                    if adopted:
                        self._metrics.rollouts(tiers.status())
            except Exception:  # the shared state's actor is restarting: ask again next time
                logger.warning("could not read the shared rollbacks", exc_info=True)
            await asyncio.sleep(ROLLBACK_SYNC_S)

    async def _learn_engines(self, wait_s: float | None) -> None:
        """Ask the engine versions not heard from yet for their model_info (each bounded by `wait_s`;
        None: until it answers, raising its error) and tell the service (its tiers' warm-up speeds)."""
        missing = self._service.engines_unheard()
        answers = await asyncio.gather(*(asyncio.wait_for(asyncio.ensure_future(self._engines[label].model_info.remote()),
                                                          wait_s) for label in missing), return_exceptions=wait_s is not None)
        for label, info in zip(missing, answers, strict=True):
            if not isinstance(info, BaseException):
                self._service.engine_started(label, info)

    async def _follow_replicas(self) -> None:
        app = serve.get_replica_context().app_name
        while True:
            try:
                await self._learn_engines(ENGINE_INFO_WAIT_S)
                deployments = (await asyncio.to_thread(serve.status)).applications[app].deployments
                for engine in self._engine_versions:
                    states = deployments[engine.deployment].replica_states
                    running = sum(n for state, n in states.items() if getattr(state, "value", state) == "RUNNING")
                    self._router.fleet.resize(engine.label, running)
                self._metrics.backends(self._router.fleet.states())
            except Exception:  # the controller is busy or restarting: keep the last known capacity
                logger.warning("could not read the tiers' replica counts", exc_info=True)
            # While a version has not run yet its requests are refused as starting: learn its start at once.
            await asyncio.sleep(STARTING_POLL_S if self._router.fleet.never_ran() else REPLICA_POLL_S)

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
