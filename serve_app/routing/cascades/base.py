"""What a cascade mode is given and returns: one request's pass through the `auto` route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from serve_app.config import CascadeConfig
from serve_app.core.generation import GenerationChunk, GenerationRequest
from serve_app.core.stream import RoutedStream

OpenTier = Callable[[str, GenerationRequest], Awaitable[tuple[str, AsyncIterator[GenerationChunk]]]]
"""Open a tier's stream for a request, through its versions, guard, breaker and shedding, within the
request's priority and deadline: the version that answers, and its chunks."""


@dataclass(frozen=True, slots=True)
class CascadeCall:
    request: GenerationRequest
    settings: CascadeConfig
    """The cascade settings in force: the config's, with the request's own over them where allowed."""
    open_tier: OpenTier


CascadeMode = Callable[[CascadeCall], Awaitable[RoutedStream]]
"""A mode opens the `auto` route's answer: its first chunk has arrived, or an error is raised."""
