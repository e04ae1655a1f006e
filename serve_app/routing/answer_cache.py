"""Recent successful answers, kept by the router as the last fallback when every backend failed.

Exact match on the normalized request (route, prompt or messages with whitespace folded, sampling
options, tools and output format); bounded in entries (least recently used goes first) and in age. Pure: the clock is injected.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.core.generation import GenerationChunk, GenerationRequest


def _fold(text: str) -> str:
    return " ".join(text.split())


def cache_key(route: str, request: GenerationRequest) -> str:
    body = {
        "route": route,
        "prompt": _fold(request.prompt) if request.prompt is not None else None,
        "messages": [{**m, "content": _fold(str(m.get("content") or ""))} for m in request.messages or []],
        "sampling": {k: v for k, v in request.sampling.items() if v is not None},
        "structured": request.structured,  # an answer is never served to a request with other tools or format
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    chunks: tuple[GenerationChunk, ...]
    served_by: str
    stored_at: float


class AnswerCache:
    def __init__(self, max_entries: int, max_age_s: float, clock: Callable[[], float]):
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._max_entries = max_entries
        self._max_age_s = max_age_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, chunks: list[GenerationChunk], served_by: str) -> None:
        """Keep a complete answer (its last chunk has a finish reason); anything else is ignored."""
        if not chunks or chunks[-1].finish_reason is None:
            return
        self._entries[key] = CachedAnswer(tuple(copy.copy(c) for c in chunks), served_by, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.stored_at > self._max_age_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry
