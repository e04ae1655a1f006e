"""Tiers with several replicas, after one `serve deploy` for the module (which restarts the replicas: the
app's args changed): the cheap tier autoscaled, the strong tier at two replicas behind the prefix-aware
request router (deployments.prefix_router).
- Autoscaling: sustained load scales the cheap tier from one replica to two, the router's capacity
  follows, and with the load gone it scales back to one.
- Prefix affinity: each turn of a conversation reaches the replica that served its history (its vLLM
  prefix cache holds it), while the conversations spread over both replicas.
The last module on the session's stack (stage 5, after the fault tests): it leaves the stack scaled,
since deploying the original config again would restart every replica for no later test."""

from __future__ import annotations

import copy
import random
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from scripts.harness.cluster import BIN, ROOT, get_json, running_replicas, wait_for, wait_until_running

pytestmark = [pytest.mark.e2e, pytest.mark.stage(5)]  # redeploys the tiers scaled, and leaves them so

AUTOSCALING = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 3, "downscale_delay_s": 20, "look_back_period_s": 6, "metrics_interval_s": 2}
PREFIX_ROUTER = {"request_router_class": "deployments.prefix_router:PrefixAffinityRouter",
                 "request_router_kwargs": {"imbalanced_threshold": 2}}


def deploy(stack, config: dict, tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([BIN / "serve", "deploy", str(path), "-a", stack.dashboard_url], cwd=ROOT, check=True, timeout=300)
    wait_until_running(stack.dashboard_url)


def warm(stack, *models: str) -> None:
    """A redeployed router starts each tier slowly (one request until it has seen a first token), so
    warm it as any rollout would: one request per tier, one at a time."""
    for model in models:
        httpx.post(f"{stack.base_url}/chat/completions", headers=stack.headers, timeout=300, json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).raise_for_status()


def router_batch(stack, backend: str) -> int:
    """The engine batch the router counts for a backend: its own view, not a metric on Ray's export interval."""
    return get_json(f"{stack.http_url}/health")["backends"][backend]["batch"]


@pytest.fixture(scope="module")
def scaled(stack, tmp_path_factory):
    config = copy.deepcopy(stack.config)
    args = config["applications"][0]["args"]
    tiers = args["tiers"]
    # A cheap replica that starts shares the two cores with the one serving the load: while its engine
    # loads and warms up, first tokens there come later than the profile's 10 s target, and the router
    # rightly sheds (503). That is the overload tests' subject; this module's is where requests go.
    args["resilience"]["shed_ttft_target_s"] = 120
    tiers["cheap"]["deployment"].update(num_replicas=None, autoscaling_config=AUTOSCALING)
    tiers["strong"]["deployment"].update(num_replicas=2, request_router_config=PREFIX_ROUTER,
                                         ray_actor_options={"num_cpus": 0.5})  # the redeploy's surge fits 4 CPUs
    # The prefix router picks a replica with blocking calls into its tree actor; on a saturated two-core
    # machine those can outlast the 5 s in which a tier with room must take a request before the router
    # calls it dead and falls back (a turn the cheap tier answers says nothing about affinity).
    tiers["strong"]["limits"].update(dispatch_timeout_s=60, first_token_timeout_s=120)
    deploy(stack, config, tmp_path_factory.mktemp("scaled"))


def test_the_cheap_tier_scales_out_under_load_and_back(stack, scaled):
    stop, failures = threading.Event(), []

    def load():
        body = {"model": "cheap", "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 64,
                "ignore_eos": True}
        with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=300) as http:
            while not stop.is_set():
                response = http.post("/chat/completions", json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text[:300]))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    try:
        assert running_replicas(stack.dashboard_url, "llm-cheap-v1") == 1
        warm(stack, "cheap")
        for worker in workers:
            worker.start()
        wait_for("a second cheap replica", lambda: running_replicas(stack.dashboard_url, "llm-cheap-v1") == 2, timeout_s=420, every_s=3)
        # The router's capacity for the tier follows: one engine batch per replica, two running (it reads the
        # replica counts every deployments.router.REPLICA_POLL_S, from a controller busy with the scale-out).
        batch = min(stack.args["tiers"]["cheap"]["deployment"]["max_ongoing_requests"],
                    stack.args["tiers"]["cheap"]["engine"]["args"]["max_num_seqs"])
        wait_for("the router to count two replicas' batches", lambda: router_batch(stack, "cheap") == 2 * batch,
                 timeout_s=300, every_s=2)
        stop.set()
        for worker in workers:
            worker.join(timeout=300)
        assert not failures, failures
        wait_for("the cheap tier back at one replica", lambda: running_replicas(stack.dashboard_url, "llm-cheap-v1") == 1,
                 timeout_s=300, every_s=3)
        wait_for("the router to count one replica's batch", lambda: router_batch(stack, "cheap") == batch,
                 timeout_s=300, every_s=2)
    finally:
        stop.set()


def engine_replica(stack, trace_id: str) -> str:
    """The engine replica that served a request, from its trace's engine span."""
    def found():
        return [s.attributes["serve_app.replica"] for s in stack.spans.trace(trace_id) if s.name.startswith("generate")]

    (replica,) = wait_for(f"the engine span of trace {trace_id}", found, 180, 0.5)
    return replica


def test_a_conversation_stays_on_one_replica_while_both_replicas_take_load(stack, scaled):
    assert running_replicas(stack.dashboard_url, "llm-strong-v1") == 2
    warm(stack, "strong")

    def converse(number: int) -> list[str]:
        """Three turns of one conversation, each answer back into its history; the replica of each turn
        (the strong tier's: a turn that fell back to another tier fails here, with its reason)."""
        rng = random.Random(number)  # a text of its own: conversations share no more than a few characters
        opening = " ".join(rng.choice(("tea", "maps", "rivers", "code", "bread", "stars")) for _ in range(80))
        messages = [{"role": "system", "content": f"#{number} {opening}"}, {"role": "user", "content": "Summarize."}]
        served = []
        with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=300) as http:
            for _ in range(3):
                response = http.post("/chat/completions", json={"model": "strong", "messages": messages,
                                                                 "max_tokens": 8, "temperature": 0})
                assert response.status_code == 200, response.text
                assert response.headers["x-served-by"] == "strong", dict(response.headers)
                served.append(engine_replica(stack, response.headers["x-trace-id"]))
                messages += [{"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]},
                             {"role": "user", "content": "Go on."}]
        return served

    with ThreadPoolExecutor(2) as pool:
        conversations = list(pool.map(converse, range(6)))
    assert all(len(set(served)) == 1 for served in conversations), conversations
    assert len({served[0] for served in conversations}) == 2, conversations  # both replicas took conversations
