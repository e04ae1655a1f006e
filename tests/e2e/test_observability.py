"""Traces, metrics and cost on the real stack: spans from the router and the engine replicas reach an
OTLP collector as one trace under the client's `traceparent`; Ray's Prometheus endpoint counts the
requests sent; every answer carries its cost."""

from __future__ import annotations

import secrets
import time

import pytest

from scripts.harness.cluster import wait_for
from scripts.harness.metrics import find, scrape, total
from tests.e2e.test_openai_api import CONFIDENCE, EASY, HARD, chat

pytestmark = pytest.mark.e2e

SERVER, CLIENT = 2, 3  # OTLP span kinds


def test_an_escalated_request_is_one_trace_under_the_clients_parent(client, stack):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    raw = chat(client, "auto", HARD, max_tokens=48, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
               extra_body=CONFIDENCE)
    response = raw.parse()
    assert raw.headers["x-cascade-escalated"] == "true" and raw.headers["x-trace-id"] == trace_id

    def complete():
        spans = stack.spans.trace(trace_id)
        return spans if sum(s.name.startswith("generate") for s in spans) >= 2 and len(spans) >= 5 else None

    spans = wait_for("the request's spans at the collector", complete, timeout_s=180, every_s=1)
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["chat auto"]
    (cheap,) = by_name["attempt cheap"]
    (strong,) = by_name["attempt strong"]
    assert root.parent_span_id == parent_id and root.kind == SERVER
    assert cheap.parent_span_id == root.span_id == strong.parent_span_id and cheap.kind == CLIENT
    engines = {s.attributes["serve_app.tier"]: s for name, group in by_name.items() if name.startswith("generate")
               for s in group}
    assert engines["cheap"].parent_span_id == cheap.span_id and engines["strong"].parent_span_id == strong.span_id
    # GenAI semantic conventions plus the project's own attributes.
    assert root.attributes["gen_ai.operation.name"] == "chat" and root.attributes["gen_ai.request.model"] == "auto"
    assert root.attributes["gen_ai.response.model"] == "strong"
    assert root.attributes["gen_ai.usage.output_tokens"] == response.usage.completion_tokens
    assert root.attributes["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert root.attributes["serve_app.escalated"] is True and root.attributes["serve_app.outcome"] == "escalated"
    assert root.attributes["serve_app.cascade.confidence"] < 0.55
    assert root.attributes["serve_app.cost_usd"] == pytest.approx(response.usage.cost_usd, rel=1e-3)
    assert 0 < root.attributes["serve_app.ttft_s"]
    assert strong.attributes["gen_ai.usage.output_tokens"] == engines["strong"].attributes["gen_ai.usage.output_tokens"]
    assert engines["cheap"].attributes["serve_app.replica_seconds"] > 0
    # Prompts and answers are not recorded unless the config says so.
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for s in spans for key in s.attributes)


def test_every_answer_carries_its_cost(client, stack):
    raw = chat(client, "cheap", EASY)
    usage = raw.parse().usage
    assert usage.cost_usd > 0 and float(raw.headers["x-request-cost-usd"]) == pytest.approx(usage.cost_usd, abs=1e-9)
    # A cascade that escalates pays for the cheap answer it threw away, so it costs more than the strong answer alone.
    escalated = chat(client, "auto", HARD, max_tokens=48, extra_body=CONFIDENCE).parse()
    strong = chat(client, "strong", HARD, max_tokens=48).parse()
    assert escalated.usage.completion_tokens == strong.usage.completion_tokens
    assert escalated.usage.cost_usd > strong.usage.cost_usd
    chunks = list(client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": EASY}],
                                                 max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.cost_usd > 0


def settled(stack, name: str, **labels) -> dict:
    """A scrape once `name` has stopped changing (Ray exports metrics on an interval)."""
    def stable():
        first = scrape(stack.metrics_url)
        time.sleep(6)
        second = scrape(stack.metrics_url)
        return second if total(first, name, **labels) == total(second, name, **labels) else None

    return wait_for(f"{name} to settle", stable, timeout_s=180, every_s=0)


def test_metrics_count_the_requests_sent(client, stack):
    requests = "ray_serve_app_requests_total"
    before = settled(stack, requests, route="cheap")
    usages = [chat(client, "cheap", f"{EASY} ({i})", max_tokens=12).parse().usage for i in range(3)]
    stream = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": EASY}], max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    usages.append(list(stream)[-1].usage)

    def counted():
        after = scrape(stack.metrics_url)
        return after if total(after, requests, route="cheap") - total(before, requests, route="cheap") >= 4 else None

    wait_for("the router's request counter", counted, timeout_s=180, every_s=2)
    after = settled(stack, requests, route="cheap")

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta(requests, route="cheap", served_by="cheap", outcome="served") == 4
    assert delta("ray_serve_app_attempts_total", backend="cheap", result="ok") == 4
    assert delta("ray_serve_app_ttft_seconds_count", route="cheap") == 4
    assert delta("ray_serve_app_e2e_seconds_count", route="cheap") == 4
    assert 0 < delta("ray_serve_app_ttft_seconds_sum", route="cheap") <= delta("ray_serve_app_e2e_seconds_sum", route="cheap")
    assert delta("ray_serve_app_output_tokens_total", backend="cheap") == sum(u.completion_tokens for u in usages)
    assert delta("ray_serve_app_input_tokens_total", backend="cheap") == sum(u.prompt_tokens for u in usages)
    assert delta("ray_serve_app_cost_usd_total", backend="cheap") == pytest.approx(sum(u.cost_usd for u in usages), rel=1e-3)
    assert find(after, "ray_serve_app_circuit_state", backend="cheap") == [0]
    assert find(after, "ray_serve_app_backend_in_flight", backend="cheap") == [0]
    # The engines' own gauges (start phases, efficiency) and vLLM's metrics, through the same endpoint.
    (start,) = find(after, "ray_serve_app_engine_start_seconds", tier="cheap", phase="engine_init")
    (mbu,) = find(after, "ray_serve_app_engine_mbu", tier="cheap")
    assert start > 0 and 0 < mbu < 2
    assert delta("ray_vllm_generation_tokens_total") >= sum(u.completion_tokens for u in usages)
