"""One streamed chat request timed as a load generator sees it (the overload benchmark and the e2e
burst test share it)."""

from __future__ import annotations

import json
import time

import httpx


async def timed_chat(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """POST `body` as a streamed chat completion and time it: `status` (0: the connection failed),
    `latency_s` to the end of the answer or to the refusal, `ttft_s` to the first content token (None if
    none came), `served_by`; for a refusal, the error's `code` and `message` and `retry_after` (a body
    that is not the OpenAI envelope, e.g. from Ray Serve's proxy refusing on its own, has the code
    `not_an_envelope`)."""
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json={**body, "stream": True}) as response:
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    error = json.loads(raw)["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"code": "not_an_envelope", "message": raw.decode(errors="replace")[:200]}
                return {"status": response.status_code, "latency_s": time.perf_counter() - started,
                        "code": error.get("code"), "message": error.get("message"),
                        "retry_after": response.headers.get("retry-after")}
            first = None
            async for line in response.aiter_lines():
                if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    first = time.perf_counter() - started
            return {"status": 200, "latency_s": time.perf_counter() - started, "ttft_s": first,
                    "served_by": response.headers.get("x-served-by")}
    except httpx.HTTPError as exc:
        return {"status": 0, "error": type(exc).__name__, "latency_s": time.perf_counter() - started}
