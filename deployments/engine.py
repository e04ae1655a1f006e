"""The engine deployment: one vLLM V1 `AsyncLLM` per replica, one class for every tier.

With its helpers (`engine_outputs`, `structured`), the only code that imports vLLM (lazily, so the app
builder stays light). Continuous batching,
prefix caching, quantization and the other engine options are vLLM's own, reached through
`engine.args`. When a caller goes away, Ray Serve cancels `generate`, and vLLM's generator aborts
the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from deployments import engine_outputs, structured, watchdog
from deployments.metrics import EngineMetrics
from serve_app.config import ModelStoreConfig, ObservabilityConfig, TierConfig
from serve_app.core.errors import BackendUnavailable, ContextLengthExceeded, InvalidRequest, ServerError
from serve_app.core.generation import Accepted, GenerationChunk, GenerationRequest
from serve_app.models import store as model_store
from serve_app.observability import efficiency, tracing
from serve_app.observability.metering import ProcessorSharing

logger = logging.getLogger("ray.serve")


def check_engine_args(args: dict[str, Any]) -> None:
    """Reject names that are not fields of vLLM's AsyncEngineArgs, naming them and the field."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    if unknown := sorted(set(args) - {f.name for f in dataclasses.fields(AsyncEngineArgs)}):
        raise ValueError(f"engine.args: {unknown} are not vLLM AsyncEngineArgs fields")


@serve.deployment(name="llm")
class LLMServer:
    async def __init__(self, name: str, tier: TierConfig | dict[str, Any],
                       observability: ObservabilityConfig | dict[str, Any] | None = None,
                       model_store: ModelStoreConfig | dict[str, Any] | None = None):
        """`name` and `tier` of the tier this replica serves; the app's observability and model store
        settings. Models as the builder validated them, or their dicts (validated here)."""
        # Before the engine starts a process: its processes end with this replica, however it ends.
        self._watchdog = watchdog.guard()
        imports_started = time.monotonic()
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401  (timed: the import is a start phase)

        config = TierConfig.model_validate(tier)
        self._tier, self._replica = name, serve.get_replica_context().replica_id.unique_id
        self._metrics = EngineMetrics(name)
        self._start_phases: dict[str, float] = {}
        self._phase("import", time.monotonic() - imports_started)
        tracing.configure(ObservabilityConfig.model_validate(observability or {}).tracing)
        self._fetched_bytes, self._served = 0, 0
        self._model = config.model.served_name or config.model.resolved()
        self._model_path = self._weights(config, ModelStoreConfig.model_validate(model_store or {}))
        self._start_engine(config)
        self._efficiency = self._efficiency_of(config)
        self._warm_up_figures = await self._warmed_up(config)

    def _weights(self, config: TierConfig, store: ModelStoreConfig) -> str:
        """Where the engine loads the model from: an s3:// source is fetched into this node's cache first
        (once per node: other replicas wait on the lock), timed."""
        if not config.model.from_s3:
            return config.model.resolved()
        result = model_store.ensure_cached(config.model.source, model_store.node_cache_dir(store.cache_dir),
                                           settings=model_store.transfer_settings(store),
                                           verify_checksums=store.verify_checksums)
        self._phase("fetch", result.seconds)
        self._fetched_bytes = result.downloaded_bytes
        logger.info("model %s in %s: %.1f s, %.0f MB downloaded (%.0f MB/s)", config.model.source, result.path,
                    result.seconds, result.downloaded_bytes / 1e6, result.bytes_per_s / 1e6)
        if store.warm_page_cache:
            warm_started = time.monotonic()
            model_store.warm_page_cache(result.path)
            self._phase("page_cache_warm", time.monotonic() - warm_started)
        return str(result.path)

    def _start_engine(self, config: TierConfig) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        check_engine_args(config.engine.args)
        started = time.monotonic()
        # vLLM's own metrics (vllm:num_requests_running, KV cache usage, ...) go to Ray's endpoint too.
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=self._model_path, **config.engine.args),
                                                 stat_loggers=[RayPrometheusStatLogger])
        self._phase("engine_init", time.monotonic() - started)
        self._tokenizer = self._engine.get_tokenizer()
        self._chat_template = config.engine.chat_template_text()
        self._tool_parser = (structured.parser_class(config.engine.tool_call_parser, self._tokenizer)
                             if config.engine.tool_call_parser else None)
        self._eos_ids = engine_outputs.eos_ids(self._tokenizer, self._engine.model_config.hf_config)
        self._grammars = structured.Grammars(self._engine, self._tokenizer)
        self._max_model_len = self._engine.model_config.max_model_len
        self._meter = ProcessorSharing(time.monotonic)
        logger.info("engine for %s ready in %.1f s (max_model_len=%d)", self._model, time.monotonic() - started,
                    self._max_model_len)

    def _efficiency_of(self, config: TierConfig) -> efficiency.AnswerEfficiency | None:
        """MBU/MFU of each answer, for a model in a local folder (its parameters are counted from the files)."""
        if not Path(self._model_path).is_dir():
            return None
        dtype = str(self._engine.model_config.dtype).removeprefix("torch.")
        peaks = efficiency.probe_peaks(config.engine.peak_memory_bandwidth_gb_s, config.engine.peak_tflops)
        return efficiency.AnswerEfficiency(self._model_path, self._engine.model_config.hf_config.to_dict(), dtype, peaks)

    async def _warmed_up(self, config: TierConfig) -> dict[str, float] | None:
        """A full batch of short generations before the replica takes traffic: the batch's slowest first
        token and its median time per output token after it (the tier's first speed estimate)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        batch, tokens = config.engine_batch, config.engine.warm_up_tokens
        if not tokens:
            return None
        params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0, output_kind=RequestOutputKind.DELTA)
        run, warm_started = uuid.uuid4().hex[:8], time.monotonic()

        async def one(i: int) -> tuple[float, float]:
            # Distinct prompts: the prefix cache must not make the batch's prefill look cheaper than it is.
            ids = self._prompt_ids(GenerationRequest(f"warm-up-{run}-{i}", {}, messages=[
                {"role": "user", "content": f"Warm-up request {i} ({run}): say hello."}]))
            started, first = time.monotonic(), None
            async for _ in self._engine.generate({"prompt_token_ids": ids}, params, f"warm-up-{run}-{i}"):
                first = first or time.monotonic()
            return first - started, (time.monotonic() - first) / max(1, tokens - 1)

        results = await asyncio.gather(*(one(i) for i in range(batch)))
        self._phase("warm_up", time.monotonic() - warm_started)
        figures = {"ttft_s": max(ttft for ttft, _ in results), "tpot_s": statistics.median(t for _, t in results),
                   "batch": batch}
        logger.info("warm-up: a batch of %d, TTFT %.3f s, TPOT %.3f s", batch, figures["ttft_s"], figures["tpot_s"])
        return figures

    def _vllm_trace_headers(self, request: GenerationRequest) -> dict[str, str] | None:
        """vLLM's own request span joins the trace when its engine exports spans (engine.args
        otlp_traces_endpoint); without it vLLM would warn on every request."""
        return (request.trace_context or None) if self._engine.observability_config.otlp_traces_endpoint else None

    def _phase(self, name: str, seconds: float) -> None:
        self._start_phases[name] = seconds
        self._metrics.start_phase(name, seconds)

    async def start_phases(self) -> dict[str, float]:
        """Seconds each phase of this replica's start took (import, fetch, page_cache_warm, engine_init)."""
        return dict(self._start_phases)

    async def replica_info(self) -> dict[str, Any]:
        """Where this replica runs and what it serves from: for operators and the multi-node tests."""
        import ray

        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "node_id": ray.get_runtime_context().get_node_id(), "model_path": self._model_path,
                "fetched_bytes": self._fetched_bytes, "start_phases": dict(self._start_phases), "served": self._served}

    async def model_info(self) -> dict[str, Any]:
        """The served model, and the warm-up's figures (None without a warm-up) as the router's first
        speed estimate for this tier."""
        return {"model": self._model, "max_model_len": self._max_model_len, "warm_up": self._warm_up_figures}

    async def num_unfinished_requests(self) -> int:
        return self._engine.output_processor.get_num_unfinished_requests()

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self):
        if getattr(self, "_engine", None) is not None:
            self._engine.shutdown()

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The templated prompt's token ids (with the request's tools), then the answer already served
        (`prefix_token_ids`)."""
        if request.messages is not None:
            try:
                text = self._tokenizer.apply_chat_template(request.messages, tools=request.tools,
                                                           chat_template=self._chat_template,
                                                           add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # a template may reject e.g. two system messages
                raise InvalidRequest(f"messages do not fit the model's chat template: {exc}", param="messages") from None
            ids = self._tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = self._tokenizer.encode(request.prompt)
        return ids + list(request.prefix_token_ids or ())

    @contextlib.contextmanager
    def _engine_errors(self, request: GenerationRequest):
        """vLLM's exceptions as the seam's: the request's fault, a dead engine, anything else."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            yield
        except VLLMClientError as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None
        except EngineDeadError as exc:
            raise BackendUnavailable(f"engine for {self._model} is dead: {exc}") from None
        except (InvalidRequest, ContextLengthExceeded):
            raise
        except Exception as exc:
            logger.exception("generation failed for request %s", request.request_id)
            raise ServerError(f"generation failed: {type(exc).__name__}") from None

    async def _verify(self, request: GenerationRequest, prompt_ids: list[int], scored: list[int]) -> GenerationChunk:
        """One prefill over prompt + prefix + `scored`, scoring them, and one token of this model's own
        after them (engine_outputs.score)."""
        prefix = list(request.prefix_token_ids or ())
        if len(prompt_ids) + len(scored) >= self._max_model_len:
            raise ContextLengthExceeded(f"This model's maximum context length is {self._max_model_len} tokens; "
                                        f"verifying {len(prompt_ids) + len(scored)} leaves no room.", param="messages")
        stop_ids = set(request.sampling.get("stop_token_ids") or ()) | (
            set() if request.sampling.get("ignore_eos") else self._eos_ids)
        span = tracing.start_generation(self._model, self._tier, request.trace_context, self._replica)
        mark, output, rescored = self._meter.join(), None, False
        try:
            with self._engine_errors(request):
                # Under an output format: the verdict of the model constrained by it (deployments.structured).
                grammar = self._grammars.following(request, prefix, stop_ids | self._eos_ids) if request.structured else None
                output, rescored = await engine_outputs.score(
                    self._engine, prompt_ids, scored, request, top=structured.GRAMMAR_TOP if grammar else 1,
                    allowed=grammar.allowed_after(scored) if grammar else None)
                scores = grammar and await structured.constrained_scores(
                    engine_outputs.scored_rows(output, scored), scored, grammar, lambda i, allowed:
                    engine_outputs.best_allowed(self._engine, prompt_ids + scored[:i], allowed, request))
                context = prompt_ids[:len(prompt_ids) - len(prefix)][-engine_outputs.DECODE_CONTEXT_TOKENS:]
                verdict = engine_outputs.verification(
                    output, context, prefix, scored, lambda t: self._tokenizer.decode(t, skip_special_tokens=True),
                    stop_ids, self._tokenizer.eos_token_id, scores=scores)
        finally:
            held = self._meter.leave(mark)
            span.set_attributes({"gen_ai.usage.input_tokens": len(prompt_ids) + len(scored),
                                 "gen_ai.usage.output_tokens": 1, "serve_app.replica_seconds": held,
                                 "serve_app.verified_tokens": len(scored), "serve_app.rescored": rescored,
                                 "serve_app.cached_tokens": (output.num_cached_tokens or 0) if output else 0})
            span.end()
        return GenerationChunk(text="", token_ids=[], prompt_tokens=len(prompt_ids) + len(scored), completion_tokens=1,
                               replica_seconds=held, verification=verdict, finish_reason="length")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Accepted | GenerationChunk]:
        """`Accepted` at once (this replica is alive and has the request), then the answer's deltas; for
        a scoring request (`verify_token_ids` or `verify_text`), one chunk with the verdict."""
        yield Accepted()
        prompt_ids = self._prompt_ids(request)
        if (scored := engine_outputs.scored_ids(self._tokenizer, request)) is not None:
            yield await self._verify(request, prompt_ids, scored)
            return
        answer = structured.StructuredAnswer(request, self._tokenizer, self._tool_parser, self._engine.model_config) \
            if request.structured else None
        params = engine_outputs.sampling_params(request, len(prompt_ids), self._max_model_len,
                                                answer.sampling() if answer else {})
        produced, finished, cached = 0, False, 0
        span = tracing.start_generation(self._model, self._tier, request.trace_context, self._replica)
        mark, joined, first_token_at = self._meter.join(), time.monotonic(), None
        try:
            outputs = self._engine.generate({"prompt_token_ids": prompt_ids}, params, request.request_id,
                                            trace_headers=self._vllm_trace_headers(request))
            with self._engine_errors(request):
                async with contextlib.aclosing(outputs):  # closing it aborts vLLM's request
                    async for output in outputs:
                        completion = output.outputs[0]
                        produced += len(completion.token_ids)
                        cached = output.num_cached_tokens or cached  # prompt tokens vLLM's prefix cache held
                        first_token_at = first_token_at or time.monotonic()
                        finished = completion.finish_reason is not None
                        text, calls, reason = completion.text, None, completion.finish_reason
                        if answer is not None:
                            text, calls = answer.delta(text, list(completion.token_ids), prompt_ids, finished)
                            reason = answer.finish_reason(reason)
                        yield GenerationChunk(
                            text=text, token_ids=list(completion.token_ids), prompt_tokens=len(prompt_ids),
                            completion_tokens=produced, finish_reason=reason, tool_calls=calls,
                            logprobs=engine_outputs.token_logprobs(completion, params.logprobs),
                            replica_seconds=self._meter.held(mark))
                        if engine_outputs.unsure(completion, request.stop_below_logprob):
                            break  # a draft ends after the first token this model is unsure of
        finally:
            held = self._meter.leave(mark)
            span.set_attributes({"gen_ai.usage.input_tokens": len(prompt_ids), "gen_ai.usage.output_tokens": produced,
                                 "serve_app.replica_seconds": held, "serve_app.cached_tokens": cached})
            if first_token_at is not None:
                span.set_attribute("serve_app.ttft_s", first_token_at - joined)
            self._served += finished
            now = time.monotonic()
            if finished and self._efficiency is not None and (figures := self._efficiency.of_answer(
                    now - first_token_at, produced, now - joined, held, len(prompt_ids))) is not None:
                self._metrics.efficiency(*figures, self._efficiency.peak_bytes_per_s)
            span.end()

