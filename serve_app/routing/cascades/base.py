"""What a cascade mode is given and returns: one request's pass through the `auto` route."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from serve_app.config import CascadeConfig
from serve_app.core.errors import ServerError
from serve_app.core.generation import GenerationChunk, GenerationRequest, Verification
from serve_app.core.stream import RoutedStream
from serve_app.routing.admission import Ticket

OpenTier = Callable[..., Awaitable[tuple[str, AsyncIterator[GenerationChunk]]]]
"""`open_tier(tier, request, ticket=None)`: open a tier's stream for a request, through its versions,
guard, breaker and shedding, within the request's priority and deadline: the version that answers, and
its chunks. With a reservation's ticket, the pass belongs to an answer admitted already."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A multi-pass answer's place on one tier, from admission to its last token (GuardedBackend.reserve)."""

    ticket: Ticket
    release: Callable[[bool], None]
    """End it: `release(completed)`."""


Reserve = Callable[[str, GenerationRequest], Reservation]
"""Admit an answer on a tier once, at the request's priority (raises Overloaded or CircuitOpen)."""


@dataclass(frozen=True, slots=True)
class CascadeCall:
    request: GenerationRequest
    settings: CascadeConfig
    """The cascade settings in force: the config's, with the request's own over them where allowed."""
    open_tier: OpenTier
    reserve: Reserve
    replan: Callable[[], int] | None = None
    """A multi-round answer's draft length under the load now (0: no more drafts); None: fixed."""


CascadeMode = Callable[[CascadeCall], Awaitable[RoutedStream]]
"""A mode opens the `auto` route's answer: its first chunk has arrived, or an error is raised."""


async def held(chunks: AsyncIterator[GenerationChunk], holds: list[Reservation]) -> AsyncIterator[GenerationChunk]:
    """`chunks`, with each tier's reservation following the answer's progress and released at its end."""
    completed = False
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                for hold in holds:
                    hold.ticket.produced = chunk.completion_tokens
                yield chunk
        completed = True
    finally:
        for hold in holds:
            hold.release(completed)


async def drain_verdict(chunks: AsyncIterator[GenerationChunk]) -> Verification:
    """The verdict a scoring request's stream carries (an error if it carries none)."""
    verdict = None
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            verdict = chunk.verification or verdict
    if verdict is None:
        raise ServerError("the strong tier answered a scoring request without a verdict")
    return verdict
