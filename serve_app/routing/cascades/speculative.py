"""The speculative cascade (`cascade.mode: speculative`): the cheap tier drafts, the strong tier verifies.

The strong tier generates the opening token (so time to first token is its own, and its prefix cache
holds the prompt for what follows). Then, each round, the cheap tier drafts a block of up to
`draft_tokens` tokens after the answer so far; the strong tier scores the block in one prefill
(serve_app.core.generation.Verification) and keeps the longest prefix whose every token v passes the
Token-V3 rule of Narasimhan et al. (ICLR 2025),

    p_strong(v) >= (1 - alpha) * max p_strong,

then adds one token of its own: its most likely token where it rejected a draft token, or the token
it generates after the block when it kept all of it. The round's tokens stream to the client at
once; the next draft continues from the served token ids. At alpha = 0 and temperature 0 the answer
is the strong tier's greedy answer (up to ties), with the strong tier decoding only its opening token
and otherwise running prefills.

At temperature > 0 drafts are sampled by the cheap tier at the caller's settings, the rule judges them
on the strong model's raw probabilities, a rejected token is replaced by the strong model's most
likely token, and the token after a kept block is sampled by the strong tier at the caller's
settings. The answer is thus the cheap tier's sample with every token the strong model finds
unlikely (below (1 - alpha) of its favourite) corrected, not a sample of the strong tier's own
distribution.

With an output format (`GenerationRequest.structured`: `response_format`, `structured_outputs`), the
opening token is generated under it, drafts are free text (vLLM starts a grammar at the first generated
token, so it cannot constrain a draft after a served prefix), and every verdict is the strong tier's under
the format (deployments/structured.py), so at alpha 0 and temperature 0 the answer is its own constrained
answer. Such an answer drafts whatever the load, and only the strong tier's verdicts can finish it.

If the strong tier fails mid-answer, the cheap tier drafts the rest alone; if the cheap tier fails,
the strong tier generates the rest alone. Either is reported in the last chunk's `speculation`
(`strong_failed` / `cheap_failed`). Pure: the tiers are functions handed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from serve_app.config import AUTO_ROUTE
from serve_app.core.errors import ClientError, InvalidRequest, ServerError, ServingError
from serve_app.core.generation import GenerationChunk, GenerationRequest, Verification
from serve_app.core.stream import RoutedStream, Routing, prepended
from serve_app.routing.cascades.base import CascadeCall, drain_verdict, held
from serve_app.routing.cascades.drafts import Draft, Speculation, cut_at_stop, drain
from serve_app.routing.scorers import kept

Open = Callable[[str, GenerationRequest], Awaitable[AsyncIterator[GenerationChunk]]]
"""Open a tier's stream for a request (through its versions, guard, breaker and shedding)."""


async def open_answer(call: CascadeCall) -> RoutedStream:
    """The speculative cascade's answer, opened: its first round is out (or both tiers failed).

    Admitted once, before any work: the answer reserves its place on both tiers (a refusal on the strong
    tier refuses the request; on the cheap tier, the strong tier answers alone), and its passes are not
    admitted again. The reservations end with the answer's last chunk."""
    if call.request.sampling.get("logprobs") is not None:
        raise InvalidRequest("logprobs are not available on the speculative cascade route; ask a tier",
                             param="logprobs")
    settings, versions = call.settings, {}
    cheap, strong = settings.cheap_tier, settings.strong_tier
    holds = {strong: call.reserve(strong, call.request)}
    refused = None

    async def open_tier(tier: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        hold = holds.get(tier)
        versions[tier], chunks = await call.open_tier(tier, request, hold.ticket if hold else None)
        return chunks

    try:
        try:
            holds[cheap] = call.reserve(cheap, call.request)
        except ServerError as exc:  # shed, broken or starting: no drafts for this answer
            refused = exc.code
        answer = SpeculativeAnswer(open_tier, call.request, cheap, strong, settings.draft_tokens, settings.alpha,
                                   settings.draft_stop_prob, drafting=refused is None, replan=call.replan)
        chunks = held(answer.chunks(), list(holds.values()))
        first = await anext(chunks)
    except BaseException:  # however the opening failed, the places are given back (releasing twice is a no-op)
        for hold in holds.values():
            hold.release(False)
        raise
    served_by = cheap if answer.stats.strong_failed else strong
    routing = Routing(route=AUTO_ROUTE, served_by=served_by, version=versions.get(served_by), reason="speculative",
                      fallback_reason=f"{strong}: failed mid-answer" if answer.stats.strong_failed else
                      f"{cheap}: {refused}" if refused else f"{cheap}: failed" if answer.stats.cheap_failed else None)
    return RoutedStream(routing, prepended(first, chunks))


class SpeculativeAnswer:
    """One answer's rounds. Iterate `chunks()` for the served deltas; usage counts served tokens."""

    def __init__(self, open_tier: Open, request: GenerationRequest, cheap: str, strong: str,
                 draft_tokens: int, alpha: float, draft_stop_prob: float = 0.0, drafting: bool = True,
                 replan: Callable[[], int] | None = None):
        """`drafting` False: the cheap tier is not to be asked (it refused the answer); the strong tier
        answers alone. `replan`, asked before each round, gives the draft length the load allows now (0:
        the strong tier finishes the answer alone); without it every round drafts `draft_tokens`."""
        self._replan = replan
        self._open, self._request = open_tier, request
        self._drafting = drafting
        self._cheap, self._strong = cheap, strong
        self._gamma, self._alpha = draft_tokens, alpha
        # A draft ends after the first token the cheap tier samples below this probability: the tokens
        # after it are likely rejected, and every scored token costs the strong tier's pass.
        self._draft_floor = math.log(draft_stop_prob) if draft_stop_prob > 0 else None
        self._max_tokens = request.sampling.get("max_tokens")
        self._stops = [request.sampling["stop"]] if isinstance(request.sampling.get("stop"), str) \
            else list(request.sampling.get("stop") or ())
        # The router applies stop strings to the served text; the tiers must not cut drafts at them.
        self._sampling = {k: v for k, v in request.sampling.items() if k not in ("stop", "logprobs", "max_tokens")}
        self.stats = Speculation()
        self._ids: list[int] = []
        self._text = ""
        self._prompt_tokens = 0
        self._round = 0

    def _ask(self, max_tokens: int | None, verify: list[int] | None = None, draft: bool = False) -> GenerationRequest:
        self._round += 1
        sampling = {**self._sampling, **({"max_tokens": max_tokens} if max_tokens is not None else {})}
        floor = self._draft_floor if draft else None
        if floor is not None:
            sampling["logprobs"] = 0  # the sampled token's, which the cheap engine judges the draft's end by
        # One version of each tier for the whole answer while a canary runs: the rounds share a session key.
        # A draft after a served prefix is free text: vLLM starts a grammar at the first generated token. The
        # strong tier's verdict is taken under the request's format, so what is served keeps to it.
        return dataclasses.replace(self._request, request_id=f"{self._request.request_id}-s{self._round}",
                                   sampling=sampling, prefix_token_ids=list(self._ids), verify_token_ids=verify,
                                   session_key=self._request.session_key or self._request.request_id,
                                   stop_below_logprob=floor, structured=None if draft else self._request.structured)

    def _room(self) -> int | None:
        return None if self._max_tokens is None else self._max_tokens - len(self._ids)

    def _chunk(self, ids: list[int], text: str, finish: str | None) -> GenerationChunk:
        self._ids += ids
        self._text += text
        return GenerationChunk(text=text, token_ids=ids, prompt_tokens=self._prompt_tokens,
                               completion_tokens=len(self._ids), finish_reason=finish,
                               speculation=self.stats.as_dict() if finish else None)

    def _stopped(self, text: str) -> tuple[str, bool]:
        """`text` cut before a stop string, if the answer so far plus `text` contains one."""
        at = cut_at_stop(self._text + text, self._stops)
        return (text, False) if at is None else ((self._text + text)[:at][len(self._text):], True)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The opening token comes from the strong tier (its time to first token is the strong tier's,
        and its prefix cache then holds the prompt for the verification passes); then the rounds."""
        if not self._drafting:
            async for chunk in self._alone(self._strong):
                yield chunk
            return
        opening = await self._answer(self._strong, self._ask(1))
        if opening is None:
            self.stats.strong_failed = True
            async for chunk in self._alone(self._cheap):
                yield chunk
            return
        self._prompt_tokens = opening.prompt_tokens
        self.stats.added += len(opening.ids)
        text, stopped = self._stopped(opening.text)
        ended = stopped or opening.finish_reason == "stop" or not opening.ids
        room = self._room()
        yield self._chunk(opening.ids, text, "stop" if ended else "length" if room is not None and room <= 1 else None)
        if ended or (room is not None and room <= 1):
            return
        async for chunk in self._rounds():
            yield chunk

    async def _rounds(self) -> AsyncIterator[GenerationChunk]:
        while True:
            room = self._room()
            if room is not None and room <= 0:
                yield self._chunk([], "", "length")
                return
            # A constrained answer keeps drafting whatever the load: the strong tier cannot take it over mid-answer.
            gamma = self._gamma if self._replan is None or self._request.structured else self._replan()
            if gamma <= 0:  # the strong tier got busy: passes would now cost more than they save
                self.stats.drafting_stopped = True
                async for chunk in self._alone(self._strong):
                    yield chunk
                return
            block = gamma if room is None else min(gamma, room)
            draft = await self._answer(self._cheap, self._ask(block, draft=True))
            if draft is None:
                self.stats.cheap_failed = True
                async for chunk in self._alone(self._strong):
                    yield chunk
                return
            self.stats.drafted += len(draft.ids)
            self.stats.cut += draft.finish_reason is None and 0 < len(draft.ids) < block
            if not draft.ids:  # the cheap tier ended the answer without a token: the strong tier finishes it
                async for chunk in self._alone(self._strong):
                    yield chunk
                return
            try:
                verdict = await self._verify(draft.ids)
            except ClientError:
                raise
            except ServingError:
                if self._request.structured:  # an unverified draft may break the format
                    raise
                self.stats.strong_failed = True
                text, stopped = self._stopped(draft.text)
                done = stopped or draft.finish_reason == "stop" or (room is not None and room <= len(draft.ids))
                yield self._chunk(draft.ids, text, ("stop" if stopped or draft.finish_reason == "stop" else "length")
                                  if done else None)
                if not done:
                    async for chunk in self._alone(self._cheap):
                        yield chunk
                return
            chunk = self._round_chunk(draft, verdict, room)
            yield chunk
            if chunk.finish_reason is not None:
                return

    async def _answer(self, tier: str, request: GenerationRequest) -> Draft | None:
        """The tier's whole answer to `request`, or None when the tier failed server-side (shed, broken,
        timed out); the request's own errors are raised."""
        try:
            return await drain(await self._open(tier, request))
        except ClientError:
            raise
        except ServingError:
            return None

    async def _verify(self, ids: list[int]) -> Verification:
        self.stats.passes += 1
        return await drain_verdict(await self._open(self._strong, self._ask(1, verify=ids)))  # one token of its own

    def _round_chunk(self, draft: Draft, verdict: Verification, room: int | None) -> GenerationChunk:
        n, k = len(draft.ids), kept(verdict, self._alpha)
        self.stats.accepted += k
        if k < n:  # the strong model's own token in place of the first rejected one
            self.stats.replaced += 1
            ids, text, finish = draft.ids[:k] + [verdict.ids[k]], verdict.texts[k], "stop" if verdict.stops[k] else None
        elif draft.finish_reason == "stop":  # the kept draft ended the answer (an end-of-sequence token)
            ids, text, finish = draft.ids, draft.text, "stop"
        elif room is not None and room <= n:  # the kept draft used up max_tokens
            ids, text, finish = draft.ids, draft.text, "length"
        else:  # all kept: the strong model's next token comes with the same prefill
            self.stats.added += 1
            ids, text, finish = draft.ids + [verdict.ids[n]], verdict.texts[n], "stop" if verdict.stops[n] else None
        text, stopped = self._stopped(text)
        if finish is None and room is not None and len(ids) >= room:
            finish = "length"
        return self._chunk(ids, text, "stop" if stopped else finish)

    async def _constrained_rounds(self) -> AsyncIterator[GenerationChunk]:
        """The rest of a constrained answer from the strong tier alone: a verdict on no draft per token (its one
        token of its own, under the request's format)."""
        while True:
            room = self._room()
            verdict = await self._verify([])
            self.stats.added += 1
            text, stopped = self._stopped(verdict.texts[0])
            finish = "stop" if stopped or verdict.stops[0] else "length" if room is not None and room <= 1 else None
            yield self._chunk([verdict.ids[0]], text, finish)
            if finish is not None:
                return

    async def _alone(self, tier: str) -> AsyncIterator[GenerationChunk]:
        """The rest of the answer from one tier, streamed as it comes (the other tier failed or refused, or
        the load stopped the drafts); the strong tier's tokens count as its own (`added`)."""
        if self._request.structured and self._ids:  # vLLM cannot continue a constrained answer from a prefix
            if tier != self._strong:
                raise ServerError("the strong tier failed mid-answer, and only its verdicts keep an answer to the "
                                  "request's format")
            async for chunk in self._constrained_rounds():
                yield chunk
            return
        request = self._ask(self._room())
        chunks = await self._open(tier, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                self._prompt_tokens = self._prompt_tokens or chunk.prompt_tokens - len(request.prefix_token_ids)
                text, stopped = self._stopped(chunk.text)
                finish = "stop" if stopped else chunk.finish_reason
                self.stats.added += len(chunk.token_ids) if tier == self._strong else 0
                yield self._chunk(list(chunk.token_ids), text, finish)
                if stopped:
                    return
