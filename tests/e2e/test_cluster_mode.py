"""The local CPU profile's real vLLM engines as the KubeRay pods run the app: Ray Serve's HAProxy ingress in
its throughput-optimized mode (scripts.harness.cluster.ingress_env), so the router replica serves HTTP
itself and calls the engine replicas over gRPC instead of Ray object refs. A cluster of its own, after the
session's stack (on Serve's proxy and Ray's transport) is stopped; through the `openai` SDK and httpx."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from scripts.harness.cluster import ingress_env, load_profile, serving, wait_for
from scripts.harness.metrics import scrape, total
from tests.e2e.conftest import OWN_CLUSTER_STAGE, error_of

pytestmark = [pytest.mark.e2e, pytest.mark.stage(OWN_CLUSTER_STAGE)]  # a cluster of its own, once the stack is gone

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


ROUTES = {"cheap": "cheap", "strong": "strong", "auto": "strong"}
"""Each route, and the tier that serves it when nothing is wrong."""


class Cluster:
    def __init__(self, url: str, metrics_url: str, during_start: list[dict]):
        self.url, self.metrics_url = url, metrics_url
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)
        self.during_start = during_start
        """What requests sent from the deploy on, before the app was ready, got."""


def ask(url: str, route: str, timeout_s: float = 60) -> dict:
    """One short chat on `route`, as a client sees it (status 0: no connection)."""
    try:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=timeout_s, json={
            "model": route, "messages": QUESTION, "max_tokens": 8, "temperature": 0})
    except httpx.HTTPError as exc:
        return {"route": route, "status": 0, "error": type(exc).__name__}
    answer = {"route": route, "status": response.status_code, "served_by": response.headers.get("x-served-by"),
              "fallback": response.headers.get("x-fallback-reason"), "retry_after": response.headers.get("retry-after")}
    if response.status_code != 200:
        answer["code"] = error_of(response)["code"] if response.headers.get("content-type") == "application/json" \
            else "not_an_envelope"
        answer["message"] = response.text[:300]
    return answer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    env = ingress_env("haproxy")
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    during_start: list[dict] = []

    def traffic(url: str) -> None:  # a deploy followed at once by traffic, as a CI smoke test sends it
        during_start.extend(ask(url, route) for route in ROUTES)

    with serving(load_profile("local-cpu.yaml"), tmp_path_factory.mktemp("cluster-mode") / "ray-start.log",
                 ("SERVE_APP_TEST_RUN", f"cluster-mode-{uuid.uuid4().hex}"),
                 env={"RAY_metrics_report_interval_ms": "1000", **env}, while_starting=traffic) as (url, head):
        yield Cluster(url, head.metrics_url, during_start)


def test_traffic_from_the_deploy_on_is_refused_with_retry_after_then_every_route_serves_from_its_own_tier(cluster):
    """Requests sent while the engines start are refused as starting (503, Retry-After) or answered, never
    a server error; none counts against a breaker, so once the app is ready every route is served by its
    own tier (a breaker opened then and never closed again used to leave every route 503)."""
    # Before the router replica runs, the ingress answers on its own (no envelope: 404 until Serve has
    # registered the app's route, 5xx until a router replica takes it); what the router answered:
    answered = [r for r in cluster.during_start if r["status"] != 0 and r.get("code") != "not_an_envelope"]
    assert answered, cluster.during_start  # the router took requests before the engines were up
    assert all(r["status"] in (200, 503) for r in answered), answered
    ingress = [r for r in cluster.during_start if r.get("code") == "not_an_envelope"]
    assert all(r["status"] in (404, 502, 503, 504) for r in ingress), ingress
    refused = [r for r in answered if r["status"] == 503]
    assert refused and all(r["retry_after"] and int(r["retry_after"]) >= 1 for r in refused), refused
    assert any("tier_starting" in r["message"] for r in refused), refused

    def own_tiers() -> bool:
        return all((r := ask(cluster.url, route))["status"] == 200 and r["served_by"] == tier and not r["fallback"]
                   for route, tier in ROUTES.items())

    wait_for("every route served by its own tier", own_tiers, timeout_s=120, every_s=5)
    health = httpx.get(f"{cluster.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["circuits"]["cheap"] == health["circuits"]["strong"] == "closed", health


def test_a_stream_over_grpc_is_the_engines_whole_answer(cluster):
    whole = cluster.client.chat.completions.create(model="strong", messages=QUESTION, temperature=0, max_tokens=16)
    stream = cluster.client.chat.completions.create(model="strong", messages=QUESTION, temperature=0, max_tokens=16,
                                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0


def test_an_engine_error_crosses_grpc_as_the_openai_error(cluster):
    """The context check is the engine replica's (deployments/vllm_engine.py): its ServingError must reach
    the router through Serve's gRPC transport as itself, not as a transport failure."""
    response = httpx.post(f"{cluster.url}/v1/chat/completions", timeout=120, json={
        "model": "strong", "stream": True, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert response.status_code == 400 and error_of(response)["code"] == "context_length_exceeded"


def test_a_client_that_goes_away_frees_the_engine_over_grpc(cluster):
    def running() -> float:
        return total(scrape(cluster.metrics_url), "ray_vllm_num_requests_running")

    with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", timeout=120, json={
            "model": "strong", "max_tokens": 1500, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"content"' in line)
        wait_for("the engine to report the running answer", lambda: running() >= 1, timeout_s=60, every_s=0.5)
    # 1500 tokens take minutes on this CPU; once the client is gone the engine must drop the answer.
    wait_for("the engine to drop the abandoned answer", lambda: running() == 0, timeout_s=60, every_s=0.5)
