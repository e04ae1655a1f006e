"""The synthetic profile (configs/synthetic.yaml) on a cluster of its own, through the `openai` SDK: the
synthetic engine behind the engine seam in Ray Serve replicas, streams paced across the Ray hops, the
speculative cascade over it, and a client that goes away freeing the engine. Each test runs behind both
ingresses: Ray Serve's Python proxy, and its HAProxy ingress (the router replica serves HTTP itself,
one Ray hop fewer; scripts.harness.cluster.ingress_env). The tests that prove a feature works with
vLLM stay on the real engines (the session's stack)."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from scripts.harness.cluster import INGRESSES, app_args, ingress_env, load_profile, serving, wait_for
from scripts.harness.metrics import find, scrape
from tests.e2e.conftest import OWN_CLUSTER_STAGE, error_of

pytestmark = [pytest.mark.e2e, pytest.mark.stage(OWN_CLUSTER_STAGE)]  # a cluster of its own, once the stack is gone

PACE = 20
"""Tokens per second per stream: a token every 50 ms, so a held first message would carry several."""


class Synthetic:
    def __init__(self, url: str, metrics_url: str):
        self.url, self.metrics_url = url, metrics_url
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=120, max_retries=0)


@pytest.fixture(scope="module", params=INGRESSES)
def synthetic(request, tmp_path_factory) -> Synthetic:
    config = load_profile("synthetic.yaml")
    for tier in app_args(config)["tiers"].values():
        tier["engine"]["synthetic"]["tokens_per_s"] = PACE
    with serving(config, tmp_path_factory.mktemp("synthetic") / "ray-start.log",
                 ("SERVE_APP_TEST_RUN", f"synthetic-{uuid.uuid4().hex}"),
                 env={"RAY_metrics_report_interval_ms": "1000", **ingress_env(request.param)}) as (url, head):
        yield Synthetic(url, head.metrics_url)


def streamed(client: openai.OpenAI, model: str, max_tokens: int, **extra) -> list[str]:
    stream = client.chat.completions.create(model=model, max_tokens=max_tokens, stream=True, extra_body=extra,
                                            messages=[{"role": "user", "content": "Count for me."}])
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def tokens(text: str) -> int:
    return text.count(" w")


def test_a_paced_stream_is_the_same_answer_in_fewer_messages_and_its_first_token_is_not_held(synthetic):
    unpaced = streamed(synthetic.client, "strong", 40, stream_interval_ms=0)
    paced = streamed(synthetic.client, "strong", 40, stream_interval_ms=500)
    whole = synthetic.client.chat.completions.create(model="strong", max_tokens=40,
                                                     messages=[{"role": "user", "content": "Count for me."}])
    assert "".join(paced) == "".join(unpaced) == whole.choices[0].message.content
    assert tokens("".join(paced)) == 40 and whole.usage.completion_tokens == 40
    assert len(paced) < len(unpaced)
    # The first token goes as soon as it is ready; later messages hold what 500 ms of 50 ms steps made.
    assert tokens(paced[0]) <= 2 < max(tokens(m) for m in paced[1:])


def test_the_speculative_route_serves_the_strong_tiers_answer_from_accepted_drafts(synthetic):
    ask = dict(max_tokens=24, messages=[{"role": "user", "content": "Draft and verify."}])
    strong = synthetic.client.chat.completions.create(model="strong", **ask)
    auto = synthetic.client.chat.completions.with_raw_response.create(model="auto", **ask)
    body = auto.parse()
    assert auto.headers["x-cascade-plan"].startswith("speculative")
    assert body.choices[0].message.content == strong.choices[0].message.content
    speculation = body.model_extra["routing"]["speculation"]
    assert speculation["accepted"] == speculation["drafted"] > 0 and speculation["replaced"] == 0


def test_a_client_that_goes_away_frees_the_engine(synthetic):
    def running() -> float:
        return sum(find(scrape(synthetic.metrics_url), "ray_vllm_num_requests_running", model_name="synthetic-strong"))

    with httpx.stream("POST", f"{synthetic.url}/v1/chat/completions", timeout=60, json={
            "model": "strong", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "A long answer, please."}]}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '" w' in line)
        wait_for("the engine to report the running answer", lambda: running() >= 1, timeout_s=60, every_s=0.5)
    # 2000 tokens at 20 a second would keep it running for 100 s.
    wait_for("the engine to drop the abandoned answer", lambda: running() == 0, timeout_s=60, every_s=0.5)


def test_a_stream_interval_out_of_bounds_is_refused_naming_it(synthetic):
    response = httpx.post(f"{synthetic.url}/v1/chat/completions", timeout=60, json={
        "model": "strong", "stream_interval_ms": 5000, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400 and "stream_interval_ms" in error_of(response)["param"]
