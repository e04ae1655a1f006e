"""vLLM's V1 `AsyncLLM` behind the engine seam (serve_app.core.engine): one per replica of a tier whose
`engine.kind` is `vllm`.

With its helpers (`engine_outputs`, `structured`), the only code that imports vLLM (lazily, so the app
builder stays light). Continuous batching, prefix caching, quantization and the other engine options
are vLLM's own, reached through `engine.args`. Closing a generation's stream aborts its request in vLLM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from deployments import engine_outputs, structured
from serve_app.config import EngineConfig
from serve_app.core.engine import EngineInfo, EngineStats
from serve_app.core.errors import ContextLengthExceeded, InvalidRequest
from serve_app.core.generation import GenerationChunk, GenerationRequest

logger = logging.getLogger("ray.serve")


def check_engine_args(args: dict[str, Any]) -> None:
    """Reject names that are not fields of vLLM's AsyncEngineArgs, naming them and the field."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    if unknown := sorted(set(args) - {f.name for f in dataclasses.fields(AsyncEngineArgs)}):
        raise ValueError(f"engine.args: {unknown} are not vLLM AsyncEngineArgs fields")


class VLLMEngine:
    def __init__(self, model_dir: str, served_name: str, config: EngineConfig):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        check_engine_args(config.args)
        # vLLM's own metrics (vllm:num_requests_running, KV cache usage, ...) go to Ray's endpoint too.
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model_dir, **config.args),
                                                 stat_loggers=[RayPrometheusStatLogger])
        model_config = self._engine.model_config
        self.info = EngineInfo(served_name, model_config.max_model_len, model_dir, model_config.hf_config.to_dict(),
                               str(model_config.dtype).removeprefix("torch."))
        self._tokenizer = self._engine.get_tokenizer()
        self._chat_template = config.chat_template_text()
        self._tool_parser = (structured.parser_class(config.tool_call_parser, self._tokenizer)
                             if config.tool_call_parser else None)
        self._eos_ids = engine_outputs.eos_ids(self._tokenizer, model_config.hf_config)
        self._grammars = structured.Grammars(self._engine, self._tokenizer)
        self._generated = 0

    def _errors(self, request: GenerationRequest, *client_errors: type[BaseException]):
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        return engine_outputs.engine_errors(self.info.model, request.request_id, (VLLMClientError, *client_errors),
                                            (EngineDeadError,))

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

    def _trace_headers(self, request: GenerationRequest) -> dict[str, str] | None:
        """vLLM's own request span joins the trace when its engine exports spans (engine.args
        otlp_traces_endpoint); without it vLLM would warn on every request."""
        return (request.trace_context or None) if self._engine.observability_config.otlp_traces_endpoint else None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prompt_ids = self._prompt_ids(request)
        answer = structured.StructuredAnswer(request, self._tokenizer, self._tool_parser, self._engine.model_config) \
            if request.structured else None
        options = engine_outputs.sampling_options(request, len(prompt_ids), self.info.max_model_len,
                                                  answer.sampling() if answer else {})
        with self._errors(request, TypeError, ValueError):
            params = SamplingParams(**options, output_kind=RequestOutputKind.DELTA)
        produced, cached = 0, 0
        outputs = self._engine.generate({"prompt_token_ids": prompt_ids}, params, request.request_id,
                                        trace_headers=self._trace_headers(request))
        with self._errors(request):
            async with contextlib.aclosing(outputs):  # closing it aborts vLLM's request
                async for output in outputs:
                    completion = output.outputs[0]
                    produced += len(completion.token_ids)
                    self._generated += len(completion.token_ids)
                    cached = output.num_cached_tokens or cached  # prompt tokens vLLM's prefix cache held
                    text, calls, reason = completion.text, None, completion.finish_reason
                    if answer is not None:
                        text, calls = answer.delta(text, list(completion.token_ids), prompt_ids, reason is not None)
                        reason = answer.finish_reason(reason)
                    yield GenerationChunk(
                        text=text, token_ids=list(completion.token_ids), prompt_tokens=len(prompt_ids),
                        completion_tokens=produced, finish_reason=reason, tool_calls=calls, cached_tokens=cached,
                        logprobs=engine_outputs.token_logprobs(completion, params.logprobs))
                    if engine_outputs.unsure(completion, request.stop_below_logprob):
                        return  # a draft ends after the first token this model is unsure of

    async def score(self, request: GenerationRequest) -> GenerationChunk:
        """One prefill over prompt + prefix + the scored tokens, scoring them, and one token of this model's
        own after them (engine_outputs.score); under an output format, the verdict of the model constrained
        by it (deployments.structured)."""
        prompt_ids = self._prompt_ids(request)
        scored = engine_outputs.scored_ids(self._tokenizer, request)
        prefix = list(request.prefix_token_ids or ())
        if len(prompt_ids) + len(scored) >= self.info.max_model_len:
            raise ContextLengthExceeded(f"This model's maximum context length is {self.info.max_model_len} tokens; "
                                        f"verifying {len(prompt_ids) + len(scored)} leaves no room.", param="messages")
        stop_ids = set(request.sampling.get("stop_token_ids") or ()) | (
            set() if request.sampling.get("ignore_eos") else self._eos_ids)
        with self._errors(request):
            grammar = self._grammars.following(request, prefix, stop_ids | self._eos_ids) if request.structured else None
            output, _ = await engine_outputs.score(
                self._engine, prompt_ids, scored, request, top=structured.GRAMMAR_TOP if grammar else 1,
                allowed=grammar.allowed_after(scored) if grammar else None)
            scores = grammar and await structured.constrained_scores(
                engine_outputs.scored_rows(output, scored), scored, grammar, lambda i, allowed:
                engine_outputs.best_allowed(self._engine, prompt_ids + scored[:i], allowed, request))
            context = prompt_ids[:len(prompt_ids) - len(prefix)][-engine_outputs.DECODE_CONTEXT_TOKENS:]
            verdict = engine_outputs.verification(
                output, context, prefix, scored, lambda t: self._tokenizer.decode(t, skip_special_tokens=True),
                stop_ids, self._tokenizer.eos_token_id, scores=scores)
        return GenerationChunk(text="", token_ids=[], prompt_tokens=len(prompt_ids) + len(scored), completion_tokens=1,
                               verification=verdict, finish_reason="length", cached_tokens=output.num_cached_tokens or 0)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(self._engine.output_processor.get_num_unfinished_requests(), self._generated)

    async def check_health(self) -> None:
        await self._engine.check_health()

    def shutdown(self) -> None:
        self._engine.shutdown()
