"""The engine deployment: one engine per replica, one class for every tier.

`EngineServer` is what a replica does with any engine behind the seam (serve_app.core.engine):
acknowledge a request at once, pace its stream (at most one message per `stream_interval_s`, the first
token at once), meter and trace it, warm up. `LLMServer` is its Ray Serve deployment, which fetches the
weights and starts the tier's engine: vLLM's `AsyncLLM` (deployments.vllm_engine) or the synthetic
engine (deployments.synthetic). When a caller goes away, Ray Serve cancels `generate`, and closing the
engine's stream aborts the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from deployments import watchdog
from deployments.metrics import EngineMetrics
from serve_app.config import ModelStoreConfig, ObservabilityConfig, TierConfig
from serve_app.core.engine import Engine
from serve_app.core.generation import Accepted, GenerationChunk, GenerationRequest
from serve_app.models import store as model_store
from serve_app.observability import efficiency, tracing
from serve_app.observability.metering import ProcessorSharing

logger = logging.getLogger("ray.serve")


class EngineServer:
    """An engine replica's requests over an injected `Engine`. `metrics` and `answer_efficiency` are optional
    (the unit tests run without Ray); `clock` is the replica's monotonic clock."""

    def __init__(self, engine: Engine, tier: str, replica: str = "", metrics: EngineMetrics | None = None,
                 answer_efficiency: efficiency.AnswerEfficiency | None = None, clock=time.monotonic):
        self._engine, self._tier, self._replica = engine, tier, replica
        self._model = engine.info.model
        self._metrics, self._efficiency, self._clock = metrics, answer_efficiency, clock
        self._meter = ProcessorSharing(clock)
        self._served = 0
        self._warm_up_figures: dict[str, float] | None = None

    async def warm_up(self, batch: int, tokens: int) -> dict[str, float] | None:
        """A full batch of short generations before the replica takes traffic: the batch's slowest first
        token and its median time per output token after it (the tier's first speed estimate)."""
        if not tokens:
            return None
        run = uuid.uuid4().hex[:8]

        async def one(i: int) -> tuple[float, float]:
            # Distinct prompts: the prefix cache must not make the batch's prefill look cheaper than it is.
            request = GenerationRequest(f"warm-up-{run}-{i}", {"max_tokens": tokens, "ignore_eos": True, "temperature": 0},
                                        messages=[{"role": "user", "content": f"Warm-up request {i} ({run}): say hello."}])
            began, first = self._clock(), None
            async for _ in self._engine.generate(request):
                first = first or self._clock()
            return first - began, (self._clock() - first) / max(1, tokens - 1)

        results = await asyncio.gather(*(one(i) for i in range(batch)))
        self._warm_up_figures = {"ttft_s": max(ttft for ttft, _ in results),
                                 "tpot_s": statistics.median(t for _, t in results), "batch": batch}
        logger.info("warm-up: a batch of %d, TTFT %.3f s, TPOT %.3f s", batch, self._warm_up_figures["ttft_s"],
                    self._warm_up_figures["tpot_s"])
        return self._warm_up_figures

    async def model_info(self) -> dict[str, Any]:
        """The served model, and the warm-up's figures (None without a warm-up) as the router's first
        speed estimate for this tier."""
        return {"model": self._model, "max_model_len": self._engine.info.max_model_len, "warm_up": self._warm_up_figures}

    async def num_unfinished_requests(self) -> int:
        return self._engine.stats().unfinished

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def _score(self, request: GenerationRequest) -> GenerationChunk:
        span = tracing.start_generation(self._model, self._tier, request.trace_context, self._replica)
        mark, chunk = self._meter.join(), None
        try:
            chunk = await self._engine.score(request)
        finally:
            held = self._meter.leave(mark)
            span.set_attributes({"gen_ai.usage.input_tokens": chunk.prompt_tokens if chunk else 0,
                                 "gen_ai.usage.output_tokens": 1, "serve_app.replica_seconds": held,
                                 "serve_app.verified_tokens": len(chunk.verification.logprobs) if chunk else 0,
                                 "serve_app.cached_tokens": chunk.cached_tokens if chunk else 0})
            span.end()
        chunk.replica_seconds = held
        return chunk

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Accepted | GenerationChunk]:
        """`Accepted` at once (this replica is alive and has the request), then the answer's deltas, at most
        one per `request.stream_interval_s` (the first at once; a draft's unpaced, since it ends at its first
        unsure token); for a scoring request (`verify_token_ids` or `verify_text`), one chunk with the verdict.
        Paced, the end of an answer reaches the router up to one interval after the engine wrote it: the
        replica learns of it only by reading, and reading late is what lets the engine merge."""
        yield Accepted()
        if request.verify_token_ids is not None or request.verify_text is not None:
            yield await self._score(request)
            return
        interval = 0.0 if request.stop_below_logprob is not None else request.stream_interval_s
        span = tracing.start_generation(self._model, self._tier, request.trace_context, self._replica)
        mark, joined, first_token_at, last = self._meter.join(), self._clock(), None, None
        send_at = joined
        try:
            async with contextlib.aclosing(self._engine.generate(request)) as deltas:
                while last is None or last.finish_reason is None:
                    if (wait := send_at - self._clock()) > 0:
                        await asyncio.sleep(wait)  # meanwhile the engine merges what it produces into one delta
                    try:
                        last = await anext(deltas)
                    except StopAsyncIteration:
                        break
                    first_token_at = first_token_at or self._clock()
                    last.replica_seconds = self._meter.held(mark)
                    yield last
                    send_at = self._clock() + interval
        finally:
            held = self._meter.leave(mark)
            produced = last.completion_tokens if last else 0
            finished = last is not None and last.finish_reason is not None
            span.set_attributes({"gen_ai.usage.input_tokens": last.prompt_tokens if last else 0,
                                 "gen_ai.usage.output_tokens": produced, "serve_app.replica_seconds": held,
                                 "serve_app.cached_tokens": last.cached_tokens if last else 0})
            if first_token_at is not None:
                span.set_attribute("serve_app.ttft_s", first_token_at - joined)
            self._served += finished
            now = self._clock()
            if finished and self._efficiency is not None and self._metrics is not None and (
                    figures := self._efficiency.of_answer(now - first_token_at, produced, now - joined, held,
                                                          last.prompt_tokens)) is not None:
                self._metrics.efficiency(*figures, self._efficiency.peak_bytes_per_s)
            span.end()


def start_engine(config: TierConfig, model_dir: str) -> Engine:
    """The tier's engine, by `engine.kind` (each imported only where it runs)."""
    served_name = config.model.served_name or config.model.resolved()
    if config.engine.kind == "synthetic":
        from deployments.synthetic import SyntheticEngine

        return SyntheticEngine(served_name, config.engine.synthetic)
    from deployments.vllm_engine import VLLMEngine

    return VLLMEngine(model_dir, served_name, config.engine)


@serve.deployment(name="llm")
class LLMServer(EngineServer):
    async def __init__(self, name: str, tier: TierConfig | dict[str, Any],
                       observability: ObservabilityConfig | dict[str, Any] | None = None,
                       model_store: ModelStoreConfig | dict[str, Any] | None = None):
        """`name` and `tier` of the tier this replica serves; the app's observability and model store
        settings. Models as the builder validated them, or their dicts (validated here)."""
        # Before the engine starts a process: its processes end with this replica, however it ends.
        self._watchdog = watchdog.guard()
        config = TierConfig.model_validate(tier)
        metrics = EngineMetrics(name)
        self._start_phases: dict[str, float] = {}
        self._fetched_bytes = 0
        if config.engine.kind == "vllm":
            imports_started = time.monotonic()
            from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401  (timed: the import is a start phase)

            self._phase(metrics, "import", time.monotonic() - imports_started)
        tracing.configure(ObservabilityConfig.model_validate(observability or {}).tracing)
        self._model_path = self._weights(metrics, config, ModelStoreConfig.model_validate(model_store or {}))
        started = time.monotonic()
        engine = start_engine(config, self._model_path)
        self._phase(metrics, "engine_init", time.monotonic() - started)
        logger.info("engine for %s ready in %.1f s (max_model_len=%d)", engine.info.model, time.monotonic() - started,
                    engine.info.max_model_len)
        super().__init__(engine, name, serve.get_replica_context().replica_id.unique_id, metrics,
                         self._efficiency_of(engine, config))
        started = time.monotonic()
        if await self.warm_up(config.engine_batch, config.engine.warm_up_tokens) is not None:
            self._phase(metrics, "warm_up", time.monotonic() - started)

    def _phase(self, metrics: EngineMetrics, name: str, seconds: float) -> None:
        self._start_phases[name] = seconds
        metrics.start_phase(name, seconds)

    def _weights(self, metrics: EngineMetrics, config: TierConfig, store: ModelStoreConfig) -> str:
        """Where the engine loads the model from: an s3:// source is fetched into this node's cache first
        (once per node: other replicas wait on the lock), timed."""
        if not config.model.from_s3:
            return config.model.resolved()
        result = model_store.ensure_cached(config.model.source, model_store.node_cache_dir(store.cache_dir),
                                           settings=model_store.transfer_settings(store),
                                           verify_checksums=store.verify_checksums)
        self._phase(metrics, "fetch", result.seconds)
        self._fetched_bytes = result.downloaded_bytes
        logger.info("model %s in %s: %.1f s, %.0f MB downloaded (%.0f MB/s)", config.model.source, result.path,
                    result.seconds, result.downloaded_bytes / 1e6, result.bytes_per_s / 1e6)
        if store.warm_page_cache:
            warm_started = time.monotonic()
            model_store.warm_page_cache(result.path)
            self._phase(metrics, "page_cache_warm", time.monotonic() - warm_started)
        return str(result.path)

    @staticmethod
    def _efficiency_of(engine: Engine, config: TierConfig) -> efficiency.AnswerEfficiency | None:
        """MBU/MFU of each answer, for a model in a local folder (its parameters are counted from the files)."""
        info = engine.info
        if info.model_dir is None or info.hf_config is None or not Path(info.model_dir).is_dir():
            return None
        peaks = efficiency.probe_peaks(config.engine.peak_memory_bandwidth_gb_s, config.engine.peak_tflops)
        return efficiency.AnswerEfficiency(info.model_dir, info.hf_config, info.dtype, peaks)

    async def start_phases(self) -> dict[str, float]:
        """Seconds each phase of this replica's start took (import, fetch, page_cache_warm, engine_init, warm_up)."""
        return dict(self._start_phases)

    async def replica_info(self) -> dict[str, Any]:
        """Where this replica runs and what it serves from, answers finished and tokens its engine generated
        (at `at`, this host's clock): for operators, the multi-node tests and the capacity benchmark."""
        import ray

        return {"replica": self._replica, "node_id": ray.get_runtime_context().get_node_id(),
                "model_path": self._model_path, "fetched_bytes": self._fetched_bytes,
                "start_phases": dict(self._start_phases), "served": self._served,
                "generated_tokens": self._engine.stats().generated, "at": time.time()}

    def __del__(self):
        if getattr(self, "_engine", None) is not None:
            self._engine.shutdown()
