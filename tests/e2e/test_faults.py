"""A tier dies: users see the fallback, the breaker opens and closes, Ray Serve brings the replica back,
and nothing of the dead replica survives it (its engine processes end with it, however it ended).

Named to run last: it kills the tiers' replicas, and the tests before it want a healthy stack.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psutil
import pytest

from scripts.harness.cluster import ENGINE_EXIT_TIMEOUT_S
from scripts.harness.processes import command, describe, survivors

pytestmark = [pytest.mark.e2e, pytest.mark.stage(4)]  # kills replicas and engines

RECOVERY_TIMEOUT_S = 600


def ask(stack, model="cheap") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=180)


@dataclass
class Killed:
    actor: str
    """The replica's actor name (Ray Serve's replacement has another)."""
    family: list[psutil.Process]
    """Every process the replica had started: its engine's processes and their watchdog."""


def replica(deployment: str) -> tuple[dict, psutil.Process]:
    """The one replica of `deployment` (a substring of its actor name): its named actor and its process."""
    import ray
    from ray.util.state import list_actors

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if deployment in a["name"]]
    assert len(names) == 1, names
    (actor,) = list_actors(filters=[("name", "=", names[0]["name"]), ("state", "=", "ALIVE")], detail=True)
    return names[0], psutil.Process(actor.pid)


def kill_replica(serve_handles, deployment: str, how: str = "ray.kill") -> Killed:
    """End a replica as production sees it happen: `ray.kill` (what Ray Serve does to a replica it
    replaces) or a SIGKILL of its process (the OOM killer, a crash). Its engine processes are left
    alone: they must end by themselves."""
    import ray

    named, process = replica(deployment)
    family = process.children(recursive=True)
    assert any("EngineCore" in command(p) for p in family), describe(family)
    if how == "ray.kill":
        ray.kill(ray.get_actor(named["name"], namespace=named["namespace"]), no_restart=True)
    elif how == "sigkill":
        process.kill()
    else:
        raise ValueError(how)
    return Killed(named["name"], family)


def assert_ended(killed: Killed) -> None:
    left = survivors(killed.family, ENGINE_EXIT_TIMEOUT_S)
    assert not left, f"processes of {killed.actor} outlived it by {ENGINE_EXIT_TIMEOUT_S} s: {describe(left)}"


def wait_served_by_own_tier(stack, model="cheap", tier=None) -> httpx.Response:
    """Ray Serve replaces the replica; the breaker probes it (at once when the router sees it running, else
    after the cool-down) and closes: the route is served by its own tier again, with no fallback."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        response = ask(stack, model)
        assert response.status_code == 200, response.text
        if response.headers["x-served-by"] == (tier or model) and "x-fallback-reason" not in response.headers:
            return response
        assert time.monotonic() < deadline, f"the {tier or model} tier never came back: {dict(response.headers)}"
        time.sleep(5)


def test_a_dead_tier_falls_back_opens_its_circuit_and_recovers(stack, serve_handles):
    """The strong tier's replica dies under `strong` and `auto` traffic. Each `auto` answer reserves a place
    (and, half-open, the breaker's probe) on the strong tier before its first pass: such a probe was never
    given back, and the tier stayed lost after Ray Serve had replaced it."""
    assert ask(stack, "strong").headers["x-served-by"] == "strong"
    killed = kill_replica(serve_handles, "llm-strong-v1", how="sigkill")

    # While the replica is gone, every answer still arrives, from a fallback, saying why.
    resilience = stack.args["resilience"]
    with ThreadPoolExecutor(resilience["breaker_failure_threshold"]) as pool:
        during = list(pool.map(lambda _: ask(stack, "strong"), range(resilience["breaker_failure_threshold"])))
    for response in during:
        assert response.status_code == 200, response.text
        assert response.headers["x-served-by"] == "cheap"
        # No live replica takes the request (dispatch timeout), its replica died under it, or the router
        # has learned from Ray Serve that the tier has no running replica: it fails over within seconds.
        assert response.headers["x-fallback-reason"] in (
            "strong: no_live_replica", "strong: backend_unavailable", "strong: tier_starting"), response.headers
    health = httpx.get(f"{stack.http_url}/health", timeout=10).json()
    assert health["circuits"]["strong"] == "open" or "strong" in health["starting"], health

    # The open circuit (or the known-dead tier) answers from the fallback without waiting on it.
    fast = ask(stack, "strong")
    assert fast.status_code == 200 and fast.headers["x-fallback-reason"] in ("strong: circuit_open", "strong: tier_starting")
    # `auto` meanwhile, every few seconds until the tier is back: each is answered, from a fallback.
    for _ in range(6):
        response = ask(stack, "auto")
        assert response.status_code == 200, response.text
        time.sleep(2)

    assert_ended(killed)  # the killed replica's engine did not outlive it
    for model in ("strong", "auto"):
        response = wait_served_by_own_tier(stack, model, tier="strong")
    assert "x-fallback-reason" not in response.headers
    health = httpx.get(f"{stack.http_url}/health", timeout=10).json()
    assert health["circuits"]["strong"] == "closed" and health["status"] == "ok", health
    import ray

    assert killed.actor not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_a_replica_whose_engine_died_is_replaced_and_leaves_nothing_behind(stack, serve_handles):
    """The engine core crashes: the replica's health check fails, Ray Serve replaces the replica, and
    what was left of the old one (its engine's worker, the replica itself) ends."""
    named, process = replica("llm-cheap-v1")
    family = process.children(recursive=True)
    (core,) = [p for p in family if "EngineCore" in command(p)]
    core.kill()
    # Every request is still answered meanwhile (by the fallback), and the new replica serves.
    wait_served_by_own_tier(stack)
    assert_ended(Killed(named["name"], [process, *family]))
    import ray

    assert named["name"] not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_when_both_tiers_die_the_external_api_answers(stack, serve_handles):
    killed = [kill_replica(serve_handles, "llm-strong-v1"), kill_replica(serve_handles, "llm-cheap-v1")]
    response = ask(stack, model="strong")
    assert response.status_code == 200, response.text
    assert response.headers["x-served-by"] == "backup"
    reason = response.headers["x-fallback-reason"]
    assert reason.startswith("strong: ") and "cheap: " in reason
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    for replica_killed in killed:
        assert_ended(replica_killed)
