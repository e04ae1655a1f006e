"""The protections do not take the service down: closed-loop clients well inside capacity get no refusal on
`auto`, and a storm of clients that resend at once on every refusal (ignoring Retry-After) is answered
cheaply and leaves every route served by its own tier within a breaker cool-down once it stops.

Bounded on loopback: a fixed number of clients, each sending a fixed number of requests.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from scripts.harness.cluster import get_json, wait_for
from scripts.harness.streams import timed_chat
from tests.e2e.conftest import API_KEYS

pytestmark = pytest.mark.e2e

CLIENTS = 6
"""Closed-loop clients on `auto`: a fifth of the strong tier's engine batch (32)."""
TURNS = 6
STORM_CLIENTS = 16
STORM_TRIES = 10
ROUTES = {"cheap": "cheap", "strong": "strong", "auto": "strong"}


def question(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Name a city in country number {i}."}]


def test_closed_loop_clients_inside_capacity_get_no_refusal_on_auto(stack):
    """As users drive it: each client sends its next request when its answer ends, mixing lengths,
    temperatures and streaming."""
    rng = random.Random(7)
    plans = [[(rng.choice([8, 32]), rng.choice([0.0, 0.7]), rng.random() < 0.5) for _ in range(TURNS)]
             for _ in range(CLIENTS)]

    async def client_loop(client: httpx.AsyncClient, c: int) -> list[dict]:
        results = []
        for turn, (max_tokens, temperature, stream) in enumerate(plans[c]):
            body = {"model": "auto", "messages": question(100 * c + turn), "max_tokens": max_tokens,
                    "temperature": temperature}
            results.append(await timed_chat(client, f"{stack.base_url}/chat/completions", body, stream=stream))
        return results

    async def run_all():
        async with httpx.AsyncClient(headers=stack.headers, timeout=300) as client:
            return await asyncio.gather(*(client_loop(client, c) for c in range(CLIENTS)))

    results = [r for loop in asyncio.run(run_all()) for r in loop]
    refused = [r for r in results if r["status"] != 200]
    assert not refused, refused
    assert all(r["complete"] and r["served_by"] == "strong" for r in results), results


def test_a_storm_that_ignores_retry_after_ends_and_every_route_serves_from_its_own_tier(stack):
    """Each storm client resends at once whenever it is refused, up to a fixed number of tries; refusals come
    cheaply (429 from the key's rate limit, 503 before any work), nothing fails with a server error, and once
    the storm stops ordinary clients (with the other key) are served by each route's own tier."""
    body = {"model": "auto", "max_tokens": 48, "temperature": 0}

    async def hammer(client: httpx.AsyncClient, c: int) -> list[dict]:
        results = []
        for attempt in range(STORM_TRIES):
            result = await timed_chat(client, f"{stack.base_url}/chat/completions",
                                      {**body, "messages": question(1000 * c + attempt)})
            results.append(result)  # refused or served, the next one goes at once
        return results

    async def storm():
        async with httpx.AsyncClient(headers=stack.headers, timeout=300,
                                     limits=httpx.Limits(max_connections=STORM_CLIENTS + 4)) as client:
            return await asyncio.gather(*(hammer(client, c) for c in range(STORM_CLIENTS)))

    results = [r for loop in asyncio.run(storm()) for r in loop]
    statuses = [r["status"] for r in results]
    assert set(statuses) <= {200, 429, 503}, [r for r in results if r["status"] not in (200, 429, 503)]
    for refusal in (r for r in results if r["status"] in (429, 503)):
        assert refusal["code"] != "not_an_envelope" and refusal["retry_after"] is not None, refusal
    assert all(r["complete"] for r in results if r["status"] == 200)

    wait_for("the storm's answers to end", lambda: all(
        b["in_flight"] == 0 for b in get_json(f"{stack.http_url}/health")["backends"].values()), timeout_s=300)
    ordinary = {"Authorization": f"Bearer {API_KEYS[1]}"}

    def own_tiers() -> bool:
        for route, tier in ROUTES.items():
            response = httpx.post(f"{stack.base_url}/chat/completions", headers=ordinary, timeout=120, json={
                "model": route, "messages": question(7), "max_tokens": 8, "temperature": 0})
            if response.status_code != 200 or response.headers.get("x-served-by") != tier or \
                    "x-fallback-reason" in response.headers:
                return False
        return True

    cooldown_s = stack.args["resilience"]["breaker_cooldown_s"]
    wait_for("every route served by its own tier", own_tiers, timeout_s=cooldown_s + 120, every_s=2)
    circuits = get_json(f"{stack.http_url}/health")["circuits"]
    assert circuits["cheap"] == circuits["strong"] == "closed", circuits
