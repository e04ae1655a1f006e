"""A tier's versions as the router serves them: which version answers a request (the canary split,
the stable version stepping in when the canary fails), the canary guard's verdict, and shadow copies.

`TierVersions` is the only owner of that state. The split and the guard are `rollout.TierTraffic`'s
pure policy; the copies in flight and their log are kept here, and every shadow outcome (answered,
failed, or shed before it was sent) goes through `_shadow_done`, which also tells the deployment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import AsyncIterator, Callable

from serve_app.config import RolloutConfig, TierRollout
from serve_app.core.errors import ClientError, Overloaded, ServingError
from serve_app.core.generation import GenerationChunk, GenerationRequest
from serve_app.core.ledger import Ledger
from serve_app.routing.admission import Ticket
from serve_app.routing.backend import GuardedBackend
from serve_app.routing.rollout import Choice, RolledBack, ShadowLog, ShadowRecord, TierTraffic, agreement

SHADOW_PRIMARY_WAIT_S = 600.0
"""How long a finished shadow waits for the primary answer to compare with (a client may never read it)."""


async def _teed(chunks: AsyncIterator[GenerationChunk], answer: asyncio.Future) -> AsyncIterator[GenerationChunk]:
    """`chunks` as they are; `answer` gets (text, completion tokens) once they are all out, or None
    when the stream ends early."""
    text, tokens, complete = [], 0, False
    try:
        async for chunk in chunks:
            text.append(chunk.text)
            tokens = chunk.completion_tokens
            yield chunk
        complete = True
    finally:
        await chunks.aclose()
        if not answer.done():
            answer.set_result(("".join(text), tokens) if complete else None)


class TierVersions:
    def __init__(self, tier: str, default_version: str, backends: dict[str, GuardedBackend], rng: random.Random,
                 clock: Callable[[], float], on_rollback: Callable[[str, RolledBack], None] | None = None,
                 on_shadow: Callable[[str, ShadowRecord], None] | None = None):
        """`backends`: each version's, by version name. `on_rollback` and `on_shadow` tell the deployment
        about the guard's rollbacks and every shadow outcome."""
        self.tier = tier
        self._default_version, self._backends = default_version, backends
        self._rng, self._clock = rng, clock
        self._on_rollback, self._on_shadow = on_rollback, on_shadow
        self._traffic = TierTraffic(tier, default_version, TierRollout(), rng, clock)
        self._shadows = ShadowLog()
        self._shadow_in_flight = 0
        self._shadow_tasks: set[asyncio.Task] = set()

    @property
    def identity(self) -> str:
        """The identity of the rollout applied (serve_app.routing.rollout.rollout_identity)."""
        return self._traffic.identity

    def label(self, version: str) -> str:
        """The backend label of one of the tier's versions (metrics, health, engine infos)."""
        return self._backends[version].name

    @property
    def runs_canary(self) -> bool:
        return self._traffic.config.canary is not None

    def apply(self, rollout: TierRollout) -> None:
        """A (validated) rollout. Unchanged: the guard's history and any rollback stay; changed: the split,
        the guard and the shadow log start afresh (copies still running finish into the old log)."""
        if rollout != self._traffic.config:
            self._traffic = TierTraffic(self.tier, self._default_version, rollout, self._rng, self._clock)
            self._shadows = ShadowLog()

    def adopt(self, identity: str, rollback: RolledBack) -> bool:
        """A rollback decided elsewhere for rollout `identity`; ignored when another rollout is applied here.
        True if it changed anything."""
        return self._traffic.identity == identity and self._traffic.adopt(rollback)

    async def shadows_done(self) -> None:
        """Wait for the shadow copies in flight (each records its outcome when it ends)."""
        while self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

    def status(self) -> dict:
        return {**self._traffic.status(), "shadow_in_flight": self._shadow_in_flight,
                "shadow_results": self._shadows.summary()}

    def backend(self, session_key: str | None) -> GuardedBackend:
        """The version's backend a request with this session key goes to (its load, for the cascade's plan
        and a multi-pass answer's reservation)."""
        return self._backends[self._traffic.pick(session_key).version]

    async def open(self, request: GenerationRequest, priority: str, deadline: float, ledger: Ledger,
                   mirror: bool = False, ticket: Ticket | None = None) -> tuple[str, AsyncIterator[GenerationChunk]]:
        """Open the version the rollout picks for this request; a canary that fails is judged by its guard
        and the stable version answers instead. With `mirror`, the request may also be copied to the shadow.
        `ticket`: a reserved answer's place on the version that holds it (GuardedBackend.reserve)."""
        choice = self._traffic.pick(request.session_key)
        try:
            chunks = await self._open_version(choice, request, priority, deadline, ledger, ticket)
        except ServingError as exc:
            if not choice.canary or isinstance(exc, ClientError):
                raise
            choice = Choice(self._traffic.stable, canary=False)
            chunks = await self._open_version(choice, request, priority, deadline, ledger, ticket)
        return choice.version, self._mirrored(request, chunks) if mirror else chunks

    async def _open_version(self, choice: Choice, request: GenerationRequest, priority: str, deadline: float,
                            ledger: Ledger, ticket: Ticket | None) -> AsyncIterator[GenerationChunk]:
        started = self._clock()
        backend = self._backends[choice.version]
        held = ticket if ticket is not None and backend.load.holds(ticket) else None
        try:
            chunks = await backend.open(request, priority, deadline, ledger, held)
        except ServingError as exc:
            if not isinstance(exc, (ClientError, Overloaded)):  # the version failed (an open circuit too),
                self._judge(choice, False, None)                 # not the request, nor its capacity
            raise
        self._judge(choice, True, self._clock() - started)
        return chunks

    def _judge(self, choice: Choice, ok: bool, ttft_s: float | None) -> None:
        rollback = self._traffic.record(choice, ok, ttft_s)
        if rollback is not None and self._on_rollback is not None:
            self._on_rollback(self.tier, rollback)

    def _mirrored(self, request: GenerationRequest, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        """The primary answer as it is; when the rollout mirrors this request, a copy goes to the shadow
        version in the background and the two answers are compared once both are done."""
        version = self._traffic.wants_copy()
        if version is None:
            return chunks
        log = self._shadows
        if self._shadow_in_flight >= self._traffic.config.shadow_max_in_flight:
            self._shadow_done(log, ShadowRecord(version, "shed", error="too many copies in flight"))
            return chunks
        shadow = self._backends[version]
        if not shadow.load.slot_free():  # shed first: a busy shadow gets no copies
            self._shadow_done(log, ShadowRecord(version, "shed", error="the shadow version is busy"))
            return chunks
        primary: asyncio.Future = asyncio.get_running_loop().create_future()
        copy = dataclasses.replace(request, request_id=f"{request.request_id}-shadow", trace_context={})
        self._shadow_in_flight += 1
        task = asyncio.create_task(self._shadow(log, shadow, copy, primary))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
        return _teed(chunks, primary)

    async def _shadow(self, log: ShadowLog, shadow: GuardedBackend, request: GenerationRequest,
                      primary: asyncio.Future) -> None:
        record = ShadowRecord(shadow.version, "ok")
        ledger = Ledger(self._clock())
        try:
            text = []
            try:
                async for chunk in await shadow.open(request, "low", math.inf, ledger):
                    text.append(chunk.text)
                    record.output_tokens = chunk.completion_tokens
            except Overloaded as exc:
                record.outcome, record.error = "shed", exc.code
            except ServingError as exc:
                record.outcome, record.error = "error", exc.code
            attempt = ledger.attempts[-1] if ledger.attempts else None
            if attempt is not None:
                record.ttft_s, record.cost_usd = attempt.ttft_s, attempt.cost_usd
                record.latency_s = (attempt.finished_s or self._clock()) - attempt.started_s
            try:
                async with asyncio.timeout(SHADOW_PRIMARY_WAIT_S):
                    answer = await primary
            except TimeoutError:
                answer = None
            if answer is not None and record.outcome == "ok":
                primary_text, record.primary_output_tokens = answer
                record.agreement = round(agreement(primary_text, "".join(text)), 4)
                record.exact = primary_text == "".join(text)
        finally:
            self._shadow_in_flight -= 1
            self._shadow_done(log, record)

    def _shadow_done(self, log: ShadowLog, record: ShadowRecord) -> None:
        log.add(record)
        if self._on_shadow is not None:
            self._on_shadow(self.tier, record)


class Tiers:
    """Every tier's versions, by tier: the one owner of the rollouts in force."""

    def __init__(self, tiers: dict[str, TierVersions]):
        self._tiers = tiers

    def __contains__(self, tier: str) -> bool:
        return tier in self._tiers

    async def open(self, tier: str, request: GenerationRequest, priority: str, deadline: float, ledger: Ledger,
                   mirror: bool = False, ticket: Ticket | None = None) -> tuple[str, AsyncIterator[GenerationChunk]]:
        """Open the tier's version the rollout picks (TierVersions.open): its name and its stream."""
        return await self._tiers[tier].open(request, priority, deadline, ledger, mirror, ticket)

    def backend(self, tier: str, session_key: str | None) -> GuardedBackend:
        """The backend of the tier's version a request with this session key goes to."""
        return self._tiers[tier].backend(session_key)

    def apply(self, rollouts: RolloutConfig) -> None:
        """A (validated) rollout config. A tier whose rollout is unchanged keeps its guard's history and any
        rollback; a changed one starts afresh."""
        for tier, versions in self._tiers.items():
            versions.apply(rollouts.rollouts.get(tier, TierRollout()))

    def status(self) -> dict[str, dict]:
        return {tier: versions.status() for tier, versions in self._tiers.items()}

    async def shadows_done(self) -> None:
        """Wait for every tier's shadow copies in flight."""
        for versions in self._tiers.values():
            await versions.shadows_done()

    def label(self, tier: str, version: str) -> str:
        """The backend label of a tier's version: the tier's name while it has one version, else tier@version."""
        return self._tiers[tier].label(version)

    def runs_canary(self) -> bool:
        """Whether some tier sends traffic to a canary (rollbacks may then come from other replicas)."""
        return any(versions.runs_canary for versions in self._tiers.values())

    def identities(self) -> dict[str, str]:
        """Per tier, the identity of its rollout (serve_app.routing.rollout.rollout_identity)."""
        return {tier: versions.identity for tier, versions in self._tiers.items()}

    def adopt(self, tier: str, identity: str, rollback: RolledBack) -> bool:
        """A rollback decided elsewhere (another router replica, an earlier life of this one) for the
        tier's rollout `identity`; ignored when this replica applies another rollout. True if it changed anything."""
        versions = self._tiers.get(tier)
        return versions is not None and versions.adopt(identity, rollback)
