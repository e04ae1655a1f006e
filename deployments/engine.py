"""The engine deployment: one vLLM V1 `AsyncLLM` per replica, one class for every tier.

The only module that imports vLLM (lazily, so the app builder stays light). Continuous batching,
prefix caching, quantization and the other engine options are vLLM's own, reached through
`engine_kwargs`. When a caller goes away, Ray Serve cancels `generate`, and vLLM's generator aborts
the request in the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.errors import BackendUnavailable, ContextLengthExceeded, InvalidRequest, ServerError
from serve_app.generation import Accepted, GenerationChunk, GenerationRequest, TokenLogprob

logger = logging.getLogger("ray.serve")


def check_engine_kwargs(engine_kwargs: dict[str, Any]) -> None:
    """Reject names that are not fields of vLLM's AsyncEngineArgs, naming them and the field."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(engine_kwargs) - known)
    if unknown:
        raise ValueError(f"engine_kwargs: {unknown} are not vLLM AsyncEngineArgs fields")


@serve.deployment(name="llm")
class LLMServer:
    def __init__(self, model: str, engine_kwargs: dict[str, Any], served_model_name: str | None = None):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        check_engine_kwargs(engine_kwargs)
        started = time.monotonic()
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **engine_kwargs))
        self._tokenizer = self._engine.get_tokenizer()
        self._max_model_len = self._engine.model_config.max_model_len
        self._model = served_model_name or model
        logger.info("engine for %s ready in %.1f s (max_model_len=%d)", model, time.monotonic() - started, self._max_model_len)

    async def model_info(self) -> dict[str, Any]:
        return {"model": self._model, "max_model_len": self._max_model_len}

    async def num_unfinished_requests(self) -> int:
        return self._engine.output_processor.get_num_unfinished_requests()

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            try:
                text = self._tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # a template may reject e.g. two system messages
                raise InvalidRequest(f"messages do not fit the model's chat template: {exc}", param="messages") from None
            return self._tokenizer.encode(text, add_special_tokens=False)
        return self._tokenizer.encode(request.prompt)

    def _sampling_params(self, request: GenerationRequest, prompt_len: int):
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        room = self._max_model_len - prompt_len
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self._max_model_len} tokens. However, your "
                f"prompt has {prompt_len} tokens, leaving no room for an answer.", param="messages")
        sampling = dict(request.sampling)
        max_tokens = sampling.pop("max_tokens", None) or room
        if max_tokens > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self._max_model_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion).",
                param="max_tokens")
        try:
            return SamplingParams(**sampling, max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA)
        except (TypeError, ValueError, VLLMClientError) as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Accepted | GenerationChunk]:
        """`Accepted` at once (this replica is alive and has the request), then the answer's deltas."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        yield Accepted()
        prompt_ids = self._prompt_ids(request)
        params = self._sampling_params(request, len(prompt_ids))
        produced = 0
        try:
            async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params, request.request_id):
                completion = output.outputs[0]
                produced += len(completion.token_ids)
                yield GenerationChunk(
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=produced,
                    logprobs=_token_logprobs(completion, params.logprobs),
                    finish_reason=completion.finish_reason,
                )
        except VLLMClientError as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None
        except EngineDeadError as exc:
            raise BackendUnavailable(f"engine for {self._model} is dead: {exc}") from None
        except Exception as exc:
            logger.exception("generation failed for request %s", request.request_id)
            raise ServerError(f"generation failed: {type(exc).__name__}") from None


def _token_logprobs(completion, top_k: int | None) -> list[TokenLogprob] | None:
    if top_k is None or completion.logprobs is None:
        return None
    result = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
        sampled = position[token_id]
        top = sorted((lp for lp in position.values() if lp.rank is not None and lp.rank <= top_k), key=lambda lp: lp.rank)
        result.append(TokenLogprob(
            token=sampled.decoded_token or "", logprob=sampled.logprob,
            top=[(lp.decoded_token or "", lp.logprob) for lp in top],
        ))
    return result
