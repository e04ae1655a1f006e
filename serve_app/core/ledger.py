"""The record of one request: every attempt at a backend, what was served, how fast and at what cost.

The router fills a `Ledger` while it routes (one `Attempt` per try at a backend, cascade steps and
fallbacks included); when the request ends, the deployment turns it into metrics and span
attributes. Pure: no Ray, no OpenTelemetry; times come from an injected clock.

One writer per fact: a ledger's fields change only through its methods (`resolved` by the router,
`attempt` by a backend, `routed`, `served`, `failed` and `finish` by the request's lifecycle), and
an attempt's only in the backend that made it (serve_app.routing.backend).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from serve_app.core.errors import ClientError, Overloaded, ServerError, ServingError
from serve_app.core.generation import GenerationChunk
from serve_app.core.stream import Routing

OUTCOMES = ("served", "escalated", "fallback", "cached", "shed", "rejected", "failed", "cancelled")
"""How a request ended: answered by its route's own backend, by the strong tier after the cascade
escalated, by a fallback step, from the answer cache; refused at capacity (503), refused as a
client error (4xx), failed; or abandoned by the client before the answer ended."""


@dataclass(slots=True)
class Attempt:
    """One try at one backend."""

    backend: str
    number: int
    """1 for the first try at this backend within the request, 2 for its retry, ..."""
    started_s: float
    first_token_s: float | None = None
    finished_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    replica_seconds: float = 0.0
    """Share of an engine replica the attempt held (processor sharing), as the engine metered it."""
    cost_usd: float = 0.0
    error: str | None = None
    """The error code when the attempt failed (e.g. timeout, overloaded, circuit_open)."""

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.started_s


@dataclass(slots=True)
class Ledger:
    """Everything the router did for one request."""

    started_s: float
    attempts: list[Attempt] = field(default_factory=list)
    route: str | None = None
    """The route the request's model named, once resolved."""
    routing: Routing | None = None
    first_byte_s: float | None = None
    """When the first answer chunk left the router (what the client's TTFT measures)."""
    finished_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    """Of the answer served (the usage the client sees); other attempts' tokens are in `attempts`."""
    finish_reason: str | None = None
    error: ServingError | None = None
    cancelled: bool = False
    """The client went away before the answer ended."""
    output_text: list[str] | None = None
    """The answer's text, kept only when traces record content."""

    def attempt(self, backend: str, now: float) -> Attempt:
        """A new try at `backend` (the backend that makes it fills it in)."""
        number = 1 + sum(a.backend == backend for a in self.attempts)
        self.attempts.append(Attempt(backend, number, now))
        return self.attempts[-1]

    def resolved(self, route: str) -> None:
        """The route the request's model names."""
        self.route = route

    def routed(self, routing: Routing) -> None:
        """Who answers, once the route's stream is open."""
        self.routing = routing

    def served(self, chunk: GenerationChunk, now: float) -> None:
        """A chunk of the answer left for the client."""
        if self.first_byte_s is None:
            self.first_byte_s = now
        self.input_tokens, self.output_tokens = chunk.prompt_tokens, chunk.completion_tokens
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if self.output_text is not None:
            self.output_text.append(chunk.text)

    def failed(self, exc: BaseException) -> None:
        """How a request that raised ended: a serving error as it is, the caller going away (cancellation,
        a closed stream) as cancelled, anything else as an internal error."""
        if isinstance(exc, ServingError):
            self.error = exc
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.cancelled = True
        else:
            self.error = ServerError(f"internal error: {type(exc).__name__}")

    def finish(self, now: float) -> None:
        """The request is over (answered, failed or abandoned)."""
        self.finished_s = now

    @property
    def cost_usd(self) -> float:
        """Every attempt's cost: a cascade pays for the cheap answer it threw away too."""
        return sum(a.cost_usd for a in self.attempts)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_byte_s is None else self.first_byte_s - self.started_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finished_s is None else self.finished_s - self.started_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time between output tokens after the first, as vLLM's benchmark defines it."""
        if self.first_byte_s is None or self.finished_s is None or self.output_tokens < 2:
            return None
        return (self.finished_s - self.first_byte_s) / (self.output_tokens - 1)

    @property
    def outcome(self) -> str:
        if self.error is not None:
            if isinstance(self.error, ClientError):
                return "rejected"
            return "shed" if isinstance(self.error, Overloaded) and self.first_byte_s is None else "failed"
        if self.cancelled:
            return "cancelled"
        routing = self.routing
        if routing is None:
            return "failed"
        if routing.served_by == "cache":
            return "cached"
        if routing.fallback_reason:
            return "fallback"
        return "escalated" if routing.escalated else "served"
