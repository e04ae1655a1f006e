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


class Cluster:
    def __init__(self, url: str, metrics_url: str):
        self.url, self.metrics_url = url, metrics_url
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    env = ingress_env("haproxy")
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    with serving(load_profile("local-cpu.yaml"), tmp_path_factory.mktemp("cluster-mode") / "ray-start.log",
                 ("SERVE_APP_TEST_RUN", f"cluster-mode-{uuid.uuid4().hex}"),
                 env={"RAY_metrics_report_interval_ms": "1000", **env}) as (url, head):
        yield Cluster(url, head.metrics_url)


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
