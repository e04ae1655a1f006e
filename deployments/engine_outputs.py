"""vLLM's request outputs turned into the engine seam's types (serve_app.core.generation): the sampled
tokens' log-probabilities, and a scoring request's `Verification`.

Duck-typed over vLLM's `CompletionOutput`/`RequestOutput` (vLLM is imported only to build its
`SamplingParams`), so the unit tests hand in plain objects. The sampling options and the error mapping
are the seam's, shared with the synthetic engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.core.errors import BackendUnavailable, ContextLengthExceeded, InvalidRequest, ServerError, ServingError
from serve_app.core.generation import GenerationRequest, TokenLogprob, Verification

logger = logging.getLogger("ray.serve")

DECODE_CONTEXT_TOKENS = 4
"""Prompt tokens decoded in front of an answer's, so that a tokenizer that drops a leading space at the
start of a text (SentencePiece) decodes the first answer token as it reads in context, as vLLM's
incremental detokenizer does."""


def sampling_options(request: GenerationRequest, prompt_len: int, max_model_len: int,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """An engine's sampling options for a generation: the request's, with `extra` over them (a structured
    answer's), `max_tokens` defaulting to the room left in the context; a context overflow is the
    request's fault (ContextLengthExceeded, naming what overflowed)."""
    room = max_model_len - prompt_len
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {prompt_len} tokens, leaving no room for an answer.", param="messages")
    sampling = {**request.sampling, **extra}
    max_tokens = sampling.pop("max_tokens", None) or room
    if max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion).",
            param="max_tokens")
    return {**sampling, "max_tokens": max_tokens}


@contextlib.contextmanager
def engine_errors(model: str, request_id: str, client_errors: tuple[type[BaseException], ...] = (),
                  dead_errors: tuple[type[BaseException], ...] = ()):
    """An engine's exceptions as the seam's: the request's fault (`client_errors`) is an InvalidRequest
    naming the parameter it knows, a dead engine (`dead_errors`) is BackendUnavailable, the seam's own
    errors pass, anything else is a ServerError (logged with its trace)."""
    try:
        yield
    except ServingError:
        raise
    except client_errors as exc:
        raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None
    except dead_errors as exc:
        raise BackendUnavailable(f"engine for {model} is dead: {exc}") from None
    except Exception as exc:
        logger.exception("generation failed for request %s", request_id)
        raise ServerError(f"generation failed: {type(exc).__name__}") from None


async def best_allowed(engine: Any, ids: list[int], allowed: list[int], request: GenerationRequest) -> tuple[int, float]:
    """The model's own next token after `ids` among `allowed`, and its log-probability (one token generated,
    at the caller's own-token sampling)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    own = {k: v for k, v in request.sampling.items() if k in SAMPLING_OF_OWN_TOKEN}
    params = SamplingParams(**own, max_tokens=1, logprobs=0, allowed_token_ids=allowed, detokenize=False,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    output = None
    async for output in engine.generate({"prompt_token_ids": ids}, params, f"{request.request_id}-a{len(ids)}"):  # noqa: B007
        pass
    completion = output.outputs[0]
    token = completion.token_ids[0]
    return token, completion.logprobs[0][token].logprob


def eos_ids(tokenizer: Any, hf_config: Any) -> set[int]:
    """The token ids that end this model's answers: its tokenizer's and its config's end of sequence."""
    configured = getattr(hf_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return {i for i in ids if i is not None}


def scored_ids(tokenizer: Any, request: GenerationRequest) -> list[int] | None:
    """The tokens a scoring request asks to score (its ids, or its text in this model's tokens); None
    for a generation."""
    if request.verify_text is not None:
        return tokenizer.encode(request.verify_text, add_special_tokens=False)
    return None if request.verify_token_ids is None else list(request.verify_token_ids)


def token_logprobs(completion: Any, top_k: int | None) -> list[TokenLogprob] | None:
    """The sampled tokens' log-probabilities with their `top_k` alternatives, when they were asked for."""
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


def unsure(completion: Any, floor: float | None) -> bool:
    """Whether a delta holds a sampled token whose log-probability is below `floor` (a draft ends there)."""
    if floor is None or completion.logprobs is None:
        return False
    return any(position[token_id].logprob < floor
               for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True))


UNFINISHED = "\ufffd"
"""What a tokenizer decodes an incomplete UTF-8 sequence to."""
SAMPLING_OF_OWN_TOKEN = ("temperature", "top_p", "top_k", "min_p", "seed")
"""The caller's sampling options that a scoring call keeps for the one token it generates."""


async def score(engine: Any, prompt_ids: list[int], scored: list[int], request: GenerationRequest, top: int = 1,
                allowed: list[int] | None = None) -> tuple[Any, bool]:
    """vLLM's output for one prefill over `prompt_ids + scored` with the `top` prompt log-probabilities of
    each position, and one token sampled after them (among `allowed`, if given); whether it took a second
    prefill. The first reads the prefix cache; if the hit covered a scored position, the second does not."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    own = {k: v for k, v in request.sampling.items() if k in SAMPLING_OF_OWN_TOKEN}
    output = None
    for skip_cache in (False, True):
        params = SamplingParams(**own, max_tokens=1, prompt_logprobs=top, detokenize=False, allowed_token_ids=allowed,
                                skip_reading_prefix_cache=skip_cache, output_kind=RequestOutputKind.FINAL_ONLY)
        async for output in engine.generate({"prompt_token_ids": prompt_ids + scored}, params,  # noqa: B007
                                            f"{request.request_id}-{int(skip_cache)}"):
            pass
        if not scored_positions_cached(output.num_cached_tokens, len(prompt_ids)):
            return output, skip_cache
    return output, True


def scored_positions_cached(num_cached_tokens: int | None, first_scored: int) -> bool:
    """Whether the engine's prefix-cache hit covered a position whose logits the verdict needs.

    vLLM computes prompt log-probabilities only for the positions it prefills: the token at position i
    is scored from the logits at i - 1, so the verdict on tokens from `first_scored` on needs every
    position from `first_scored - 1` computed, i.e. a hit of at most `first_scored - 1` tokens."""
    return (num_cached_tokens or 0) > first_scored - 1


def scored_rows(output: Any, verify_ids: Sequence[int]) -> list[dict[int, Any]]:
    """The prompt log-probabilities of the scored positions (each: token id to vLLM's Logprob, ranked)."""
    rows = output.prompt_logprobs
    return rows[len(rows) - len(verify_ids):]


def verification(output: Any, context_ids: Sequence[int], prefix_ids: Sequence[int], verify_ids: Sequence[int],
                 decode: Callable[[list[int]], str], stop_ids: set[int], eos_id: int | None,
                 scores: tuple[list[float], list[int], list[float]] | None = None) -> Verification:
    """The verdict of one scoring prefill (`output`: vLLM's RequestOutput with prompt log-probabilities)
    over prompt + `prefix_ids` + `verify_ids`, whose last `len(verify_ids)` prompt positions are scored.

    `context_ids`: the prompt's last tokens, decoded in front of the answer for its text; `decode`:
    token ids to text (special tokens skipped); `stop_ids`: token ids that end an answer. `scores`: per
    scored position, the scored token's log-probability, the model's own token and its log-probability,
    when they are not the row's (a grammar's verdict: deployments.structured.constrained_scores)."""
    if scores is None:  # the model's unconstrained verdict: its most likely token at each position
        scores = ([], [], [])
        for position, token_id in zip(scored_rows(output, verify_ids), verify_ids, strict=True):
            top_id, top = next((i, lp) for i, lp in position.items() if lp.rank == 1)
            scores[0].append(position[token_id].logprob)
            scores[1].append(top_id)
            scores[2].append(top.logprob)
    logprobs, top_ids, top_logprobs = scores
    generated = list(output.outputs[0].token_ids)
    ids = [*top_ids, generated[0] if generated else eos_id]
    context = list(context_ids)
    # A character split across tokens decodes as U+FFFD until its last byte arrives: held back, as
    # vLLM's incremental detokenizer does, so it is sent whole with the round that completes it.
    base = decode(context + list(prefix_ids)).rstrip(UNFINISHED)
    texts = []
    for k, candidate in enumerate(ids):
        served = [*prefix_ids, *verify_ids[:k]] + ([] if candidate in stop_ids else [candidate])
        texts.append(decode(context + served).rstrip(UNFINISHED)[len(base):])
    return Verification(logprobs=tuple(logprobs), top_ids=tuple(top_ids), top_logprobs=tuple(top_logprobs),
                        ids=tuple(ids), texts=tuple(texts), stops=tuple(i in stop_ids for i in ids))
