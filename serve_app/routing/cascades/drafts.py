"""What a speculative answer's rounds are made of (serve_app.routing.cascades.speculative): a tier's whole
draft, the tally of what the answer took, and where a stop string cuts the served text."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from serve_app.core.generation import GenerationChunk


def cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in `text`, if one occurs."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


@dataclass(slots=True)
class Speculation:
    """What a speculative answer took: tokens drafted by the cheap tier, drafts it ended early at a token
    it was unsure of (`cut`), drafted tokens kept, tokens the strong tier put in instead of a rejected
    draft, tokens it added of its own (the opening token, and one after each kept block), verification
    passes."""

    drafted: int = 0
    cut: int = 0
    accepted: int = 0
    replaced: int = 0
    added: int = 0
    passes: int = 0
    strong_failed: bool = False
    cheap_failed: bool = False
    drafting_stopped: bool = False
    """The load rose mid-answer: the strong tier finished it alone (serve_app.routing.cascades.adaptive)."""

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(slots=True)
class Draft:
    ids: list[int]
    text: str
    finish_reason: str | None
    prompt_tokens: int


async def drain(chunks: AsyncIterator[GenerationChunk]) -> Draft:
    ids, text, finish, prompt = [], [], None, 0
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            ids += chunk.token_ids
            text.append(chunk.text)
            finish, prompt = chunk.finish_reason or finish, chunk.prompt_tokens
    return Draft(ids, "".join(text), finish, prompt)
