"""A tier dies: users see the fallback, the breaker opens and closes, Ray Serve brings the replica back.

Named to run last: it kills the tiers' replicas, and the tests before it want a healthy stack.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e

RECOVERY_TIMEOUT_S = 600


def ask(stack, model="cheap") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=180)


def circuits(stack) -> dict:
    return httpx.get(f"{stack.http_url}/health", timeout=10).json()["circuits"]


def kill_replica(serve_handles, deployment: str) -> str:
    """SIGKILL a replica's actor and, as the crash of its node or container would, the vLLM engine
    processes it started: those outlive a killed parent (vLLM has no parent-death check) and would keep
    polling on the cores the other engines need."""
    import psutil
    import ray
    from ray.util.state import list_actors

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if deployment in a["name"]]
    assert len(names) == 1, names
    (actor,) = list_actors(filters=[("name", "=", names[0]["name"]), ("state", "=", "ALIVE")], detail=True)
    engine = psutil.Process(actor.pid).children(recursive=True)
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    for process in engine:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return names[0]["name"]


def test_a_dead_tier_falls_back_opens_its_circuit_and_recovers(stack, serve_handles):
    assert ask(stack).headers["x-served-by"] == "cheap"
    killed = kill_replica(serve_handles, "llm-cheap-v1")

    # While the replica is gone, every answer still arrives, from the strong tier, saying why.
    resilience = stack.config["applications"][0]["args"]["resilience"]
    with ThreadPoolExecutor(resilience["breaker_failure_threshold"]) as pool:
        during = list(pool.map(lambda _: ask(stack), range(resilience["breaker_failure_threshold"])))
    for response in during:
        assert response.status_code == 200, response.text
        assert response.headers["x-served-by"] == "strong"
        # No live replica takes the request (dispatch timeout), or its replica died under it: either
        # way it fails over within seconds, not after the 20 s first-token timeout.
        assert response.headers["x-fallback-reason"] in ("cheap: no_live_replica", "cheap: backend_unavailable")
    assert circuits(stack)["cheap"] == "open"

    # The open circuit answers from the fallback without waiting on the dead tier.
    fast = ask(stack)
    assert fast.status_code == 200 and fast.headers["x-fallback-reason"] == "cheap: circuit_open"

    # Ray Serve replaces the replica; after the cool-down a probe closes the circuit again.
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        response = ask(stack)
        assert response.status_code == 200
        if response.headers["x-served-by"] == "cheap":
            break
        assert time.monotonic() < deadline, "the cheap tier never came back"
        time.sleep(5)
    assert "x-fallback-reason" not in response.headers
    assert circuits(stack)["cheap"] == "closed"
    import ray

    assert killed not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_when_both_tiers_die_the_external_api_answers(stack, serve_handles):
    kill_replica(serve_handles, "llm-strong-v1")
    kill_replica(serve_handles, "llm-cheap-v1")
    response = ask(stack, model="strong")
    assert response.status_code == 200, response.text
    assert response.headers["x-served-by"] == "backup"
    reason = response.headers["x-fallback-reason"]
    assert reason.startswith("strong: ") and "cheap: " in reason
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
