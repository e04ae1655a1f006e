"""One streamed chat request timed as a client sees it: `timed_chat` as a load generator (asyncio; the
overload benchmark and the e2e burst test share it), `stream_chat` one request at a time (threads; the
prefix and latency-breakdown benchmarks)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx


async def timed_chat(client: httpx.AsyncClient, url: str, body: dict, stream: bool = True,
                     headers: dict[str, str] | None = None) -> dict:
    """POST `body` as a chat completion (streamed unless `stream` is False) and time it: `status` (0: the
    connection failed), `latency_s` to the end of the answer or to the refusal, `ttft_s` to the first
    content token (None if none came; a whole answer's is its latency), `served_by` and `plan` (the
    x-served-by and x-cascade-plan headers), `tokens` (the usage's completion tokens) and `complete` (a
    streamed answer ended with [DONE] and no error event); for a refusal, the error's `code` and
    `message` and `retry_after` (a body that is not the OpenAI envelope, e.g. from Ray Serve's proxy
    refusing on its own, has the code `not_an_envelope`)."""
    started = time.perf_counter()
    body = {**body, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    error = json.loads(raw)["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"code": "not_an_envelope", "message": raw.decode(errors="replace")[:200]}
                return {"status": response.status_code, "latency_s": time.perf_counter() - started,
                        "code": error.get("code"), "message": error.get("message"),
                        "retry_after": response.headers.get("retry-after")}
            head = {"served_by": response.headers.get("x-served-by"), "plan": response.headers.get("x-cascade-plan")}
            if not stream:
                answer = json.loads(await response.aread())
                latency = time.perf_counter() - started
                return {"status": 200, "latency_s": latency, "ttft_s": latency, "complete": True,
                        "tokens": answer["usage"]["completion_tokens"], **head}
            first, done, failed, tokens = None, False, False, None
            async for line in response.aiter_lines():
                done = done or line == "data: [DONE]"
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices") or ()):
                    first = time.perf_counter() - started
                failed = failed or "error" in chunk
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            return {"status": 200, "latency_s": time.perf_counter() - started, "ttft_s": first,
                    "complete": done and not failed, "tokens": tokens, **head}
    except httpx.HTTPError as exc:
        return {"status": 0, "error": type(exc).__name__, "latency_s": time.perf_counter() - started}


def first_token_in(chunk: dict) -> bool:
    """A chunk carrying the answer's first token: content, or the end of an answer whose token is empty."""
    return any(c.get("delta", {}).get("content") or c.get("finish_reason") for c in chunk.get("choices") or ())


@dataclass(frozen=True)
class Streamed:
    sent_ns: int
    """Wall clock when the request was sent (to compare with spans' timestamps on the same host)."""
    first_ns: int
    """Wall clock at the first token's chunk."""
    ttft_s: float
    """Monotonic seconds from sending to the first token's chunk."""
    latency_s: float
    """Monotonic seconds from sending to the end of the stream."""
    text: str
    headers: httpx.Headers


def stream_chat(http: httpx.Client, body: dict, path: str = "/v1/chat/completions") -> Streamed:
    """POST `body` as a streamed chat completion and read it to the end; HTTPStatusError on a refusal,
    AssertionError if no chunk carried a token."""
    sent, started, first, parts = time.time_ns(), time.perf_counter(), None, []
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and first_token_in(chunk):
                first = (time.time_ns(), time.perf_counter() - started)
            parts += [c["delta"]["content"] for c in chunk.get("choices") or () if c.get("delta", {}).get("content")]
    assert first is not None, "no token in the stream"
    return Streamed(sent, first[0], first[1], time.perf_counter() - started, "".join(parts), response.headers)
