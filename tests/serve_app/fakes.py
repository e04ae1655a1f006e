"""Fakes the policy tests share: a backend that streams fixed words, a settable clock, a request."""

import asyncio
import math

from serve_app.generation import GenerationChunk, GenerationRequest, TokenLogprob


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


def request(logprobs=None):
    return GenerationRequest("r1", {"max_tokens": 8, "logprobs": logprobs}, prompt="capital of France?")
