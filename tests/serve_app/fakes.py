"""Fakes the policy tests share: a backend that streams fixed words, one over integer tokens that also
scores (for the speculative and verified cascades), a settable clock, an event loop on a virtual clock,
a request, a router over two tiers."""

import asyncio
import math
import selectors

from serve_app.config import AppConfig
from serve_app.core.errors import BackendUnavailable
from serve_app.core.generation import GenerationChunk, GenerationRequest, TokenLogprob, Verification
from serve_app.routing.factory import build_router


class FakeTier:
    """Streams fixed words, each token with probability `prob`; records what it was asked."""

    def __init__(self, words, prob, error=None, delay_s=0.0):
        self.words, self.prob, self.error, self.delay_s = words, prob, error, delay_s
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    async def __call__(self, request):
        self.requests.append(request)
        if self.error:
            raise self.error
        want = request.sampling.get("logprobs")
        try:
            await asyncio.sleep(self.delay_s)
            for i, word in enumerate(self.words):
                yield GenerationChunk(
                    text=word, token_ids=[i], prompt_tokens=3, completion_tokens=i + 1,
                    logprobs=None if want is None else [TokenLogprob(word, math.log(self.prob))],
                    finish_reason="stop" if i == len(self.words) - 1 else None,
                )
        finally:
            self.closed += 1


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer whenever nothing is ready: a fake tier's 5 s delay
    or a router's 0.2 s timeout take no wall time, and their order is the one the times say, on any machine."""

    def __init__(self):
        super().__init__(selectors.DefaultSelector())
        self._now = 0.0
        select = self._selector.select

        def jump_when_idle(timeout=None):
            events = select(0)
            if events or timeout is None:  # ready now, or nothing scheduled: wait for a real wake-up (a thread)
                return events or select(None)
            self._now += timeout
            return events

        self._selector.select = jump_when_idle

    def time(self) -> float:
        return self._now


def run(coro):
    """`asyncio.run` on the virtual clock."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)


def request(logprobs=None):
    return GenerationRequest("r1", {"max_tokens": 8, "logprobs": logprobs}, prompt="capital of France?")


EOS = 0
TOP, OTHER, UNSURE = 0.6, 0.3, 0.2


def text_of(ids):
    return "".join(f" w{t}" for t in ids if t != EOS)


def ids_of(text):
    """`text_of` undone: the token model's tokenizer."""
    return [int(word[1:]) for word in text.split()]


class TokenModel:
    """A fake engine over integer tokens: its favourite token at answer position i is `favourites[i]`
    (EOS past the end), with probability TOP; any other token has OTHER. Generates greedily, one chunk
    per token; scores like the engine's `verify_token_ids` / `verify_text` path. Fails calls numbered in `fail_calls`.
    At the answer positions in `unsure` its favourite has probability UNSURE instead, and a draft
    (`stop_below_logprob`) ends there as the engine's does."""

    def __init__(self, favourites, fail_calls=(), hang_after=None, unsure=()):
        self.favourites, self.fail_calls, self.hang_after = list(favourites), set(fail_calls), hang_after
        self.unsure = set(unsure)
        self.requests: list[GenerationRequest] = []
        self.open_streams = 0

    def favourite(self, position):
        return self.favourites[position] if position < len(self.favourites) else EOS

    async def open(self, request):
        return self(request)

    async def __call__(self, request):
        """As a router backend: a stream of chunks (an error raised at its first)."""
        self.requests.append(request)
        if len(self.requests) in self.fail_calls:
            raise BackendUnavailable("replica lost")
        self.open_streams += 1
        try:
            prefix = list(request.prefix_token_ids or [])
            scored = ids_of(request.verify_text) if request.verify_text is not None else request.verify_token_ids
            if scored is not None:
                yield GenerationChunk("", [], 5 + len(prefix), 1, verification=self.verify(prefix, scored))
                return
            limit = request.sampling.get("max_tokens") or 10_000
            for n in range(1, limit + 1):
                if self.hang_after is not None and n > self.hang_after:
                    await asyncio.Event().wait()
                token = self.favourite(len(prefix) + n - 1)
                logprob = math.log(UNSURE if len(prefix) + n - 1 in self.unsure else TOP)
                logprobs = None if request.sampling.get("logprobs") is None else [TokenLogprob(text_of([token]), logprob)]
                yield GenerationChunk(text_of([token]), [token], 5 + len(prefix), n, logprobs=logprobs,
                                      finish_reason="stop" if token == EOS else "length" if n == limit else None)
                if token == EOS or logprob < (request.stop_below_logprob or -math.inf):
                    return
        finally:
            self.open_streams -= 1

    def verify(self, prefix, scored):
        start = len(prefix)
        tops = [self.favourite(start + j) for j in range(len(scored))]
        ids = [*tops, self.favourite(start + len(scored))]
        texts = [text_of(prefix + list(scored[:k]) + [c])[len(text_of(prefix)):] for k, c in enumerate(ids)]
        return Verification(
            logprobs=tuple(math.log(TOP if v == t else OTHER) for v, t in zip(scored, tops, strict=True)),
            top_ids=tuple(tops), top_logprobs=tuple(math.log(TOP) for _ in tops), ids=tuple(ids),
            texts=tuple(texts), stops=tuple(c == EOS for c in ids))


def cascade_router(cheap, strong, **cascade):
    """A router over two fake tiers with these cascade settings, and no retries."""
    tier = {"model": {"source": "/models/x"}, "limits": {"concurrency_slots": 2, "first_token_timeout_s": 5.0}}
    config = AppConfig.model_validate({"tiers": {"cheap": tier, "strong": tier}, "cascade": cascade,
                                       "resilience": {"retry_attempts": 1}})
    return build_router({"cheap": cheap, "strong": strong}, config, Clock())
