"""What a route returns: who answers (`Routing`) and the answer's chunk stream, opened.

Immutable: a stage that wraps the chunks (the answer cache's tee, the request lifecycle's watch)
returns a new `RoutedStream` with `wrapped`, never edits the one it was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from serve_app.api.protocol import Routing
from serve_app.generation import GenerationChunk
from serve_app.observability.telemetry import Ledger


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
