"""The synthetic engine (`engine.kind: synthetic`): the engine seam (serve_app.core.engine) with no model
compute, for measuring the router and the stream path at GPU-like token rates on a CPU, and for
plumbing tests.

One step loop, as a real engine's: every 1 / `tokens_per_s` seconds each running request gets its next
token; up to `batch` requests run, the rest wait; a request's first token comes `prefill_s` after it
joins the batch. Its tokens are a function of its prompt and position alone, so every synthetic tier
(cheap or strong) writes the same answer, and a speculative cascade's verdicts accept every draft. The
answer ends with `stop` after `answer_tokens` (its end-of-sequence token), at `max_tokens` with `length`,
or at a stop string. A consumer that reads late gets everything produced since its last read as one
delta, as from vLLM. It exports vLLM's request gauges and token counters under vLLM's names.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from deployments import engine_outputs
from serve_app.config.tiers import SyntheticEngineConfig
from serve_app.core.engine import EngineInfo, EngineStats
from serve_app.core.generation import GenerationChunk, GenerationRequest, TokenLogprob, Verification

EOS = 0
VOCAB = 32_000
LOGPROB = -0.01
"""The log-probability of every token the synthetic model writes (its own token at a position)."""
WRONG_LOGPROB = -10.0
"""The log-probability it gives any other token."""
WORD = re.compile(r"w(\d+)")


def token_at(seed: int, position: int) -> int:
    """The synthetic model's token at an answer position, for a prompt with this seed (never EOS)."""
    return 1 + (seed + position * 7919) % (VOCAB - 1)


def decode(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids if i != EOS)


def encode(text: str) -> list[int]:
    """The synthetic tokens of a text: a decoded token reads back as itself, any other word as a hash."""
    return [int(m.group(1)) if (m := WORD.fullmatch(word)) else 1 + zlib.crc32(word.encode()) % (VOCAB - 1)
            for word in text.split()]


def prompt_of(request: GenerationRequest) -> tuple[int, int]:
    """A request's seed (its prompt's hash) and prompt length in synthetic tokens."""
    text = request.prompt if request.messages is None else json.dumps(request.messages, sort_keys=True, default=str)
    return zlib.crc32(text.encode()), len(text.split()) + len(request.prefix_token_ids or ())


@dataclass(slots=True, eq=False)
class _Stream:
    request: GenerationRequest
    seed: int
    prompt_len: int
    max_tokens: int
    ends_at: int | None
    """The answer position of its end-of-sequence token (None with ignore_eos)."""
    stops: tuple[str, ...] = ()
    first_at: float = float("inf")
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    text_sent: int = 0
    finish_reason: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def position(self) -> int:
        return len(self.request.prefix_token_ids or ()) + len(self.ids)

    def step(self) -> bool:
        """The next token: EOS at the answer's end, else this position's token; then the stop checks.
        Whether a token was written (EOS is not one)."""
        wrote = not (self.ends_at is not None and self.position >= self.ends_at)
        if not wrote:
            self.finish_reason = "stop"
        else:
            self.ids.append(token_at(self.seed, self.position))
            if self.stops and any(stop in decode(self.ids[-8:]) for stop in self.stops):
                self.finish_reason = "stop"
            elif len(self.ids) >= self.max_tokens:
                self.finish_reason = "length"
        self.ready.set()
        return wrote

    def take(self) -> GenerationChunk:
        """Everything produced since the last take, as one delta."""
        new, self.sent = self.ids[self.sent:], len(self.ids)
        if self.stops and self.finish_reason == "stop":  # the text up to the stop string
            text = decode(self.ids)
            if not self.request.sampling.get("include_stop_str_in_output"):
                for stop in self.stops:
                    text = text.split(stop, 1)[0]
            delta = text[self.text_sent:]
        else:
            delta = decode(new)
        self.text_sent += len(delta)
        logprobs = None
        if (top := self.request.sampling.get("logprobs")) is not None:
            logprobs = [TokenLogprob(decode([i]), LOGPROB, [(decode([i]), LOGPROB)][:top]) for i in new]
        return GenerationChunk(text=delta, token_ids=new, prompt_tokens=self.prompt_len, completion_tokens=len(self.ids),
                               logprobs=logprobs, finish_reason=self.finish_reason)


class SyntheticEngine:
    def __init__(self, model: str, config: SyntheticEngineConfig, export_metrics: bool = True, clock=time.monotonic):
        self.info = EngineInfo(model, config.max_model_len)
        self._config, self._clock = config, clock
        self._running: list[_Stream] = []
        self._waiting: collections.deque[_Stream] = collections.deque()
        self._stepper: asyncio.Task | None = None
        self._generated = 0
        self._metrics = _Metrics(model) if export_metrics else None
        self._metrics_at = 0.0

    def stats(self) -> EngineStats:
        return EngineStats(len(self._running) + len(self._waiting), self._generated)

    async def check_health(self) -> None:
        if self._stepper is not None and self._stepper.done() and not self._stepper.cancelled() \
                and self._stepper.exception() is not None:
            raise RuntimeError(f"the synthetic engine's step loop failed: {self._stepper.exception()!r}")

    def shutdown(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()

    async def abort(self, request_id: str) -> None:
        for stream in [*self._running, *self._waiting]:
            if stream.request.request_id == request_id:
                self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        if stream in self._running:
            self._running.remove(stream)
        elif stream in self._waiting:
            self._waiting.remove(stream)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        seed, prompt_len = prompt_of(request)
        options = engine_outputs.sampling_options(request, prompt_len, self.info.max_model_len, {})
        ends_at = self._ends_at(options)
        stops = options.get("stop") or ()
        stream = _Stream(request, seed, prompt_len, options["max_tokens"], ends_at,
                         (stops,) if isinstance(stops, str) else tuple(stops))
        self._waiting.append(stream)
        self._wake()
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                chunk = stream.take()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self._drop(stream)

    async def score(self, request: GenerationRequest) -> GenerationChunk:
        """One prefill's time, then the verdict: the synthetic model's own token at every scored position."""
        seed, prompt_len = prompt_of(request)
        scored = engine_outputs.scored_ids(_Tokens, request)
        await asyncio.sleep(self._config.prefill_s)
        start = len(request.prefix_token_ids or ())
        ends_at = self._ends_at(request.sampling)
        own = [EOS if ends_at is not None and start + i >= ends_at else token_at(seed, start + i)
               for i in range(len(scored) + 1)]
        texts = tuple(decode([*scored[:k], own[k]]) for k in range(len(own)))
        verdict = Verification(
            logprobs=tuple(LOGPROB if token == own[i] else WRONG_LOGPROB for i, token in enumerate(scored)),
            top_ids=tuple(own[:-1]), top_logprobs=(LOGPROB,) * len(scored), ids=tuple(own), texts=texts,
            stops=tuple(token == EOS for token in own))
        return GenerationChunk(text="", token_ids=[], prompt_tokens=prompt_len + len(scored), completion_tokens=1,
                               verification=verdict, finish_reason="length")

    def _ends_at(self, sampling: dict) -> int | None:
        """The answer position of the end-of-sequence token (None with ignore_eos)."""
        return None if sampling.get("ignore_eos") else self._config.answer_tokens

    def _wake(self) -> None:
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.get_running_loop().create_task(self._steps())

    async def _steps(self) -> None:
        """Engine steps while any request is unfinished, at a fixed pace (a late step does not shift the next)."""
        step_s, tick = 1 / self._config.tokens_per_s, self._clock()
        while self._running or self._waiting:
            now = self._clock()
            while self._waiting and len(self._running) < self._config.batch:
                stream = self._waiting.popleft()
                stream.first_at = now + self._config.prefill_s
                self._running.append(stream)
            produced = 0
            for stream in self._running:
                if now >= stream.first_at and stream.finish_reason is None:
                    produced += stream.step()
            self._running = [s for s in self._running if s.finish_reason is None]
            self._generated += produced
            if self._metrics is not None:
                self._metrics.produced += produced
                if now >= self._metrics_at:  # twice a second: Ray's export is slower still
                    self._metrics.export(len(self._running), len(self._waiting), self._config.batch)
                    self._metrics_at = now + 0.5
            tick = max(tick + step_s, self._clock() - step_s)
            await asyncio.sleep(max(0.0, tick - self._clock()))
        if self._metrics is not None:
            self._metrics.export(0, 0, self._config.batch)


class _Tokens:
    """The synthetic tokenizer, as engine_outputs.scored_ids calls one."""

    @staticmethod
    def encode(text: str, add_special_tokens: bool = False) -> list[int]:
        return encode(text)


class _Metrics:
    """vLLM's request gauges and token counter, under the names its Ray stat logger gives them."""

    def __init__(self, model: str):
        from ray.util.metrics import Counter, Gauge

        self._tags = {"model_name": model, "engine": "0"}
        keys = tuple(self._tags)
        self._running = Gauge("vllm_num_requests_running", "Requests in the synthetic batch.", tag_keys=keys)
        self._waiting = Gauge("vllm_num_requests_waiting", "Requests waiting for the synthetic batch.", tag_keys=keys)
        self._usage = Gauge("vllm_kv_cache_usage_perc", "Share of the synthetic batch in use.", tag_keys=keys)
        self._tokens = Counter("vllm_generation_tokens", "Tokens the synthetic engine generated.", tag_keys=keys)

        self.produced = 0

    def export(self, running: int, waiting: int, batch: int) -> None:
        self._running.set(running, self._tags)
        self._waiting.set(waiting, self._tags)
        self._usage.set(running / batch, self._tags)
        if self.produced:
            self._tokens.inc(self.produced, self._tags)
            self.produced = 0
