"""What a route returns: who answers and why (`Routing`), and the answer's chunk stream, opened.

Immutable: a stage that wraps the chunks (the answer cache's tee, the request lifecycle's watch)
returns a new `RoutedStream` with `wrapped`, never edits the one it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from serve_app.core.generation import GenerationChunk

if TYPE_CHECKING:
    from serve_app.core.ledger import Ledger


class Routing(BaseModel):
    """Which tier answered and why; also sent as x-served-by / x-cascade-* headers."""

    route: str
    served_by: str
    version: str | None = None
    """The version of the serving tier (x-served-version); None for an external API or the cache."""
    escalated: bool = False
    confidence: float | None = None
    reason: str | None = None
    fallback_reason: str | None = None
    """Set when the route's own backend failed and another answered: what failed, and how."""
    verification: dict[str, float] | None = None
    """The `verified` cascade's verdict on the cheap answer: every verifier's score of it
    (serve_app.routing.scorers.VERIFIERS), and the answer's length in the strong tier's tokens."""
    plan: str | None = None
    """The `auto` route's choice for this request (serve_app.routing.cascades.adaptive): speculative-<draft
    length>, strong (alone), confidence, or the configured mode."""
    plan_reason: str | None = None
    """Why: the load that decided it, or `configured`."""
    speculation: dict[str, int] | None = None
    """A speculative cascade's answer (in the last stream chunk): drafted, accepted, replaced and added
    tokens, verification passes, and whether a tier failed mid-answer."""


@dataclass(frozen=True, slots=True)
class RoutedStream:
    routing: Routing
    chunks: AsyncIterator[GenerationChunk]
    ledger: Ledger | None = None
    """The request's attempts so far; complete (with their costs) once `chunks` is exhausted."""
    span: Any = None
    """The request's trace span, when the request is traced."""

    def wrapped(self, wrap: Callable[[AsyncIterator[GenerationChunk]], AsyncIterator[GenerationChunk]],
                **changes: Any) -> RoutedStream:
        """A new stream whose chunks are `wrap(self.chunks)`, with any other field changed too."""
        return dataclasses.replace(self, chunks=wrap(self.chunks), **changes)

    def but(self, **changes: Any) -> RoutedStream:
        return dataclasses.replace(self, **changes)


async def from_list(chunks: list[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """A buffered answer as a stream."""
    for chunk in chunks:
        yield chunk


async def prepended(first: GenerationChunk, rest: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """`first`, then `rest` (closed with the result)."""
    async with contextlib.aclosing(rest):
        yield first
        async for chunk in rest:
            yield chunk


async def coalesced(items: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """`items` joined into at most one write per `interval_s`, holding every item ready by then, in order;
    the first at once. A reader task keeps pulling `items` while a write waits; an error it meets is raised
    after the items before it. The last write is never held: when `items` ends, what is ready goes at once.
    Closing the result stops the reader and closes `items`.

    Lean on purpose, since it runs once per message of every stream: the writer waits on one future per
    write, woken by the reader (an item, or the end) or by a timer at the interval's end; no task, event or
    timeout object per message."""
    if interval_s <= 0:
        async with contextlib.aclosing(items):
            async for item in items:
                yield item
        return
    loop = asyncio.get_running_loop()
    ready: list[str] = []
    ended: list[BaseException | None] = []
    wake: asyncio.Future[None] | None = None
    holding = False
    """The writer has items and waits for the interval's end (not woken by another item, only by the end)."""

    def rouse() -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def read() -> None:
        try:
            async for item in items:
                ready.append(item)
                if not holding:
                    rouse()
            ended.append(None)
        except Exception as exc:  # noqa: BLE001  (handed to the writer, in order)
            ended.append(exc)
        rouse()

    reader = loop.create_task(read())
    send_at = loop.time()
    try:
        while ready or not ended:
            if not ready:
                holding, wake = False, loop.create_future()
                await wake
                continue
            if not ended and send_at > loop.time():
                holding, wake = True, loop.create_future()
                timer = loop.call_at(send_at, rouse)
                try:
                    await wake
                finally:
                    timer.cancel()
                continue
            batch = ready[0] if len(ready) == 1 else "".join(ready)
            ready.clear()
            yield batch
            send_at = loop.time() + interval_s
        if ended[0] is not None:
            raise ended[0]
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await items.aclose()
