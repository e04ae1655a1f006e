"""An OpenAI-compatible API as a router backend, through the official `openai` async SDK.

Streams chat or completion deltas as `GenerationChunk`s. Token ids are not known from a remote API;
usage comes from the provider's final usage chunk (stream_options.include_usage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from serve_app.api.access import secret_from_env
from serve_app.api.protocol import PASSED_THROUGH
from serve_app.config import ExternalConfig
from serve_app.core.errors import BackendUnavailable, InvalidRequest, ServerError
from serve_app.core.generation import GenerationChunk, GenerationRequest, TokenLogprob

OPENAI_SAMPLING = {"temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed", "logit_bias"}


class ExternalBackend:
    def __init__(self, name: str, config: ExternalConfig):
        self._name = name
        self._config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=secret_from_env(config.api_key_env) or "unused",
            max_retries=0, timeout=config.limits.total_timeout_s,
        )

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = {k: v for k, v in request.sampling.items() if v is not None}
        arguments: dict[str, Any] = {k: sampling[k] for k in OPENAI_SAMPLING & sampling.keys()}
        arguments["max_tokens"] = sampling.get("max_tokens")
        extra = {k: sampling[k] for k in (set(PASSED_THROUGH) - OPENAI_SAMPLING) & sampling.keys()}
        if extra and self._config.forward_extra_sampling:
            arguments["extra_body"] = extra
        structured = dict(request.structured or {})
        if (outputs := structured.pop("structured_outputs", None)) is not None:  # vLLM's extension
            if not self._config.forward_extra_sampling:
                raise InvalidRequest(f"structured_outputs: the external API {self._name!r} does not take vLLM's "
                                     "extensions (forward_extra_sampling)", param="structured_outputs")
            arguments["extra_body"] = {**arguments.get("extra_body", {}), "structured_outputs": outputs}
        arguments.update(structured)  # tools, tool_choice, parallel_tool_calls, response_format: OpenAI's own
        if "logprobs" in sampling:
            if request.messages is not None:
                arguments.update(logprobs=True, top_logprobs=sampling["logprobs"])
            else:
                arguments["logprobs"] = sampling["logprobs"]
        return arguments

    async def __call__(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        arguments = self._arguments(request)
        common = {"model": self._config.model, "stream": True, "stream_options": {"include_usage": True},
                  "extra_headers": request.trace_context}  # the provider may join the trace
        produced, prompt_tokens = 0, 0
        try:
            if request.messages is not None:
                stream = await self._client.chat.completions.create(messages=request.messages, **common, **arguments)
            else:
                stream = await self._client.completions.create(prompt=request.prompt, **common, **arguments)
            async with stream:
                finish: GenerationChunk | None = None  # held back until the usage chunk that follows it
                async for event in stream:
                    if event.usage is not None:
                        prompt_tokens, produced = event.usage.prompt_tokens, event.usage.completion_tokens
                    if not event.choices:
                        continue
                    choice = event.choices[0]
                    text = (choice.delta.content or "") if request.messages is not None else choice.text
                    calls = [call.model_dump(exclude_none=True) for call in getattr(choice.delta, "tool_calls", None)
                             or ()] if request.messages is not None else []
                    logprobs = _logprobs(choice.logprobs)
                    produced += len(logprobs) if logprobs else (1 if text or calls else 0)
                    chunk = GenerationChunk(text, [], prompt_tokens, produced, logprobs=logprobs,
                                            finish_reason=choice.finish_reason, tool_calls=calls or None)
                    if choice.finish_reason is not None:
                        finish = chunk
                    else:
                        yield chunk
                if finish is not None:
                    finish.prompt_tokens, finish.completion_tokens = prompt_tokens, produced
                    yield finish
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                openai.InternalServerError) as exc:
            raise BackendUnavailable(f"external API {self._name!r} is unavailable: {type(exc).__name__}") from None
        except openai.APIStatusError as exc:  # the request was valid for us: the provider's refusal is its failure
            raise ServerError(f"external API {self._name!r} refused the request ({exc.status_code})") from None


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    if raw is None:
        return None
    if getattr(raw, "content", None) is not None:  # chat
        return [TokenLogprob(t.token, t.logprob, [(c.token, c.logprob) for c in t.top_logprobs or []])
                for t in raw.content]
    if getattr(raw, "tokens", None):  # completions
        tops = raw.top_logprobs or [{}] * len(raw.tokens)
        return [TokenLogprob(tok, lp, list((top or {}).items()))
                for tok, lp, top in zip(raw.tokens, raw.token_logprobs, tops, strict=False)]
    return None
