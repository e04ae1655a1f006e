"""The HTTP layer on the CPU, without Ray: the real FastAPI app and service over fake backends, driven
through httpx's ASGI transport. Error envelopes, headers, auth, body bounds, the SSE framing."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.api.access import KeyGate
from serve_app.config import AppConfig
from serve_app.core.errors import ServerError
from serve_app.ingress.http import build_http_api
from serve_app.ingress.service import ApiService
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import EOS, Clock, FakeTier, TokenModel, run, text_of

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 8}


def service(cheap=None, strong=None, max_body_bytes=4096, cascade=None) -> ApiService:
    tier = {"model": {"source": "/models/x"}, "limits": {"concurrency_slots": 4}}
    config = AppConfig.model_validate({"model_alias": "my-alias", "tiers": {"cheap": tier, "strong": tier},
                                       "access": {"max_body_bytes": max_body_bytes}, "cascade": cascade or {}})
    backends = {"cheap": cheap or FakeTier(["Paris", "."], 0.9), "strong": strong or FakeTier(["Lyon", "!"], 0.9)}
    api = ApiService(config, build_router(backends, config, Clock()), KeyGate([KEY], None, None, Clock()))
    for name in backends:
        api.engine_started(name, {"model": f"/models/{name}", "max_model_len": 2048, "warm_up": None})
    return api


def call(api: ApiService, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=build_http_api(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.request(method, path, **kwargs)
            await response.aread()
            return response

    return run(go())


def envelope(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_chat_answer_names_who_served_it_and_what_it_cost():
    response = call(service(), "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Paris."
    assert body["model"] == "cheap" and body["routing"]["served_by"] == "cheap"
    assert response.headers["x-route"] == "cheap" and response.headers["x-served-by"] == "cheap"
    assert response.headers["x-cascade-escalated"] == "false"
    assert float(response.headers["x-request-cost-usd"]) >= 0


def test_malformed_json_is_a_400_envelope():
    response = call(service(), "POST", "/v1/chat/completions", content=b'{"model": "cheap", "messages": [',
                    headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400
    assert envelope(response)["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_listing_the_routes():
    response = call(service(), "POST", "/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, headers=AUTH)
    assert response.status_code == 404
    error = envelope(response)
    assert error["code"] == "model_not_found" and error["param"] == "model" and "'strong'" in error["message"]


def test_a_missing_or_wrong_key_is_a_401_before_the_body_is_read():
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}):
        response = call(service(), "POST", "/v1/chat/completions", content=b"not even json", headers=headers)
        assert response.status_code == 401, headers
        assert envelope(response)["code"] == "invalid_api_key"
    assert call(service(), "GET", "/v1/models").status_code == 401
    assert call(service(), "GET", "/health").status_code == 200  # open to all


def test_an_oversize_body_is_a_413_declared_or_streamed():
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    response = call(service(max_body_bytes=4096), "POST", "/v1/chat/completions", content=big,
                    headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413 and envelope(response)["code"] == "request_too_large"

    async def chunked():
        for _ in range(5):
            yield b"x" * 1000

    response = call(service(max_body_bytes=4096), "POST", "/v1/chat/completions", content=chunked(), headers=AUTH)
    assert response.status_code == 413


def test_bad_priority_and_timeout_headers_are_400s_naming_the_header():
    bad_priority = call(service(), "POST", "/v1/chat/completions", json=CHAT, headers={**AUTH, "x-priority": "urgent"})
    assert bad_priority.status_code == 400 and envelope(bad_priority)["param"] == "x-priority"
    for value in ("soon", "-1", "inf"):
        response = call(service(), "POST", "/v1/chat/completions", json=CHAT,
                        headers={**AUTH, "x-request-timeout": value})
        assert response.status_code == 400 and envelope(response)["param"] == "x-request-timeout", value


def test_a_stream_is_server_sent_events_ending_in_done_with_usage_when_asked():
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = call(service(), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-served-by"] == "cheap"
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in payloads if c["choices"]) == "Paris."
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 2


def test_a_speculative_stream_reports_what_the_answer_took_in_its_last_chunk():
    api = service(TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel([5, 6, 7, 8, 9, EOS]), cascade={"mode": "speculative"})
    response = call(api, "POST", "/v1/chat/completions", json={**CHAT, "model": "auto", "stream": True}, headers=AUTH)
    assert response.status_code == 200 and response.headers["x-served-by"] == "strong"
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == text_of(
        [5, 6, 7, 8, 9])
    assert events[0]["routing"]["reason"] == "speculative" and "speculation" not in events[0]["routing"]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["routing"]["speculation"]["replaced"] == 1 and events[-1]["routing"]["speculation"]["passes"] == 2
    body = call(api, "POST", "/v1/chat/completions", json={**CHAT, "model": "auto"}, headers=AUTH).json()
    assert body["routing"]["speculation"]["accepted"] == 4 and body["usage"]["completion_tokens"] == 6


def test_a_stream_that_fails_after_its_first_byte_reports_the_error_in_band():
    class FailsMidway(FakeTier):
        async def __call__(self, request):
            async for chunk in super().__call__(request):
                yield chunk
                raise ServerError("the engine died")

    body = {**CHAT, "stream": True}
    response = call(service(cheap=FailsMidway(["Paris", "."], 0.9)), "POST", "/v1/chat/completions", json=body,
                    headers=AUTH)
    assert response.status_code == 200  # the status left with the first byte
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["message"] == "the engine died"


def test_completions_models_health_and_rollouts():
    api = service()
    completion = call(api, "POST", "/v1/completions", json={"model": "strong", "prompt": "Hi", "max_tokens": 4},
                      headers=AUTH)
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"] == "Lyon!"
    models = call(api, "GET", "/v1/models", headers=AUTH).json()
    assert {m["id"] for m in models["data"]} == {"cheap", "strong", "auto", "my-alias"}
    health = call(api, "GET", "/health").json()
    assert health["status"] == "ok" and health["circuits"] == {"cheap": "closed", "strong": "closed"}
    assert health["backends"]["cheap"] == {"circuit": "closed", "in_flight": 0, "batch": 64, "limit": 4}
    rollouts = call(api, "GET", "/v1/rollouts", headers=AUTH).json()
    assert set(rollouts["tiers"]) == {"cheap", "strong"} and rollouts["config_error"] is None


def test_health_says_starting_until_every_tier_has_run_then_degraded_while_one_is_replaced():
    api = service()
    for name in ("cheap", "strong"):
        api.router.fleet.starts(name)  # as the deployment's router does before any engine answered
    response = call(api, "GET", "/health")
    assert response.status_code == 503 and response.json()["status"] == "starting"
    assert set(response.json()["starting"]) == {"cheap", "strong"}
    refused = call(api, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert refused.status_code == 503 and envelope(refused)["code"] == "backend_unavailable"
    assert "cheap: tier_starting" in envelope(refused)["message"] and int(refused.headers["retry-after"]) >= 1
    api.engine_started("cheap", {"model": "/models/cheap", "max_model_len": 2048, "warm_up": None})
    assert call(api, "GET", "/health").json()["status"] == "starting"  # strong has not run yet
    api.router.fleet.resize("strong", 1)  # Ray Serve reports its replica running
    health = call(api, "GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["starting"] == {}
    api.router.fleet.resize("strong", 0)  # lost; Ray Serve replaces it: the router serves from fallbacks
    health = call(api, "GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert list(health.json()["starting"]) == ["strong"]


def test_what_the_deployment_learns_goes_to_its_one_owner():
    api = service()
    assert api.engines_unheard() == []
    api.engine_started("strong", {"model": "/m", "max_model_len": 2048,
                                  "warm_up": {"ttft_s": 0.5, "tpot_s": 0.05, "batch": 4}})
    assert api.router.fleet["strong"].load.ttft.value == 0.5  # the warm-up is the tier's speed until live requests
    assert not api.apply_rollouts({"rollouts": {"strong": {"canary": "v9", "canary_percent": 5}}})
    rollouts = call(api, "GET", "/v1/rollouts", headers=AUTH).json()
    assert "rollouts.strong.canary: 'v9'" in rollouts["config_error"]
    assert api.apply_rollouts({}) and call(api, "GET", "/v1/rollouts", headers=AUTH).json()["config_error"] is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
VALID = {"/v1/chat/completions": CHAT, "/v1/completions": {"model": "cheap", "prompt": "Hi", "max_tokens": 4}}


def mutations():
    def nested(depth):
        value = "x"
        for _ in range(depth):
            value = {"a": [value]}
        return value

    field = st.sampled_from(["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                             "logprobs", "top_logprobs", "stop", "seed", "user", "stream_options", "junk"])
    replace = st.builds(lambda f, v: ("set", f, v), field, JSON_VALUES)
    deep = st.builds(lambda f, d: ("set", f, nested(d)), field, st.integers(min_value=50, max_value=3000))
    drop = st.builds(lambda f: ("drop", f, None), field)
    raw = st.builds(lambda b: ("raw", None, b), st.binary(max_size=64) | st.sampled_from(
        [b"\xff\xfe{", b'{"model": "cheap\xc3\x28"}', b"[]", b"null", b"1e999999"]))
    return st.tuples(st.sampled_from(sorted(VALID)), st.lists(replace | deep | drop, max_size=3), st.none() | raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_bodies_get_an_answer_or_a_4xx_envelope_never_a_500(case):
    path, edits, raw = case
    body = dict(VALID[path])
    for kind, field, value in edits:
        if kind == "drop":
            body.pop(field, None)
        else:
            body[field] = value
    try:
        content = raw[2] if raw else json.dumps(body).encode()
    except (ValueError, RecursionError):
        return
    response = call(service(), "POST", path, content=content, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        envelope(response)


@pytest.mark.parametrize("path", sorted(VALID))
def test_every_valid_body_is_answered(path):
    assert call(service(), "POST", path, json=VALID[path], headers=AUTH).status_code == 200
