"""The seam between an engine replica (deployments.engine) and the engine it runs: vLLM's `AsyncLLM`
(deployments.vllm_engine) or the synthetic engine (deployments.synthetic), chosen by a tier's
`engine.kind`. The replica owns what is the same for every engine (acknowledging, pacing the stream,
metering, tracing, the warm-up); an engine owns its prompts, sampling and errors, and speaks only the
seam's types (serve_app.core.generation, serve_app.core.errors).

No Ray or vLLM import: the replica's tests run over a fake engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine serves, once started."""

    model: str
    """The served model's name (/v1/models `root`)."""
    max_model_len: int
    model_dir: str | None = None
    """The local folder its weights were loaded from, when there is one (MBU and MFU count its parameters)."""
    hf_config: dict[str, Any] | None = None
    """The model's Hugging Face config (MBU and MFU read its shape); None for a synthetic model."""
    dtype: str | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    unfinished: int
    """Requests the engine holds: running in its batch or waiting in its scheduler."""
    generated: int
    """Tokens it has generated since it started, for every request (a capacity benchmark's `produced`)."""


class Engine(Protocol):
    info: EngineInfo

    def generate(self, request: Any) -> AsyncIterator[Any]:
        """The answer to a `GenerationRequest` as `GenerationChunk` deltas (token counts cumulative; the
        last one has a finish reason, except a draft's that stopped below its floor). Closing the
        iterator aborts the request. A consumer that reads late gets everything produced since its last
        read as one delta: what the replica's stream interval relies on (vLLM's RequestOutputCollector
        merges a request's outputs the same way while its consumer is busy)."""

    async def score(self, request: Any) -> Any:
        """The verdict on a scoring request's tokens (`verify_token_ids` / `verify_text`), as one
        `GenerationChunk` with its `verification`."""

    async def abort(self, request_id: str) -> None:
        """Stop a request the engine may still be running (a no-op for a finished one)."""

    def stats(self) -> EngineStats: ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""

    def shutdown(self) -> None: ...
