"""Access control at the ingress, as strangers and over-eager clients see it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEYS, error_of

pytestmark = pytest.mark.e2e

CHAT = {"model": "strong", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": API_KEYS[0]}])
def test_requests_without_a_valid_key_get_401(stack, headers):
    for method, path, body in [("POST", "/chat/completions", CHAT), ("POST", "/completions", {}), ("GET", "/models", None)]:
        response = httpx.request(method, f"{stack.base_url}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, path
        assert error_of(response)["code"] == "invalid_api_key"


def test_the_sdk_sees_an_authentication_error(stack):
    stranger = openai.OpenAI(base_url=stack.base_url, api_key="sk-guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(**CHAT)


def test_auth_comes_before_parsing(stack):
    response = httpx.post(f"{stack.base_url}/chat/completions", content=b"{not json", timeout=30)
    assert response.status_code == 401


def test_health_stays_open(stack):
    assert httpx.get(f"{stack.http_url}/health", timeout=10).status_code == 200


def test_oversized_body_is_413_before_it_is_read(stack):
    limit = stack.args["access"]["max_body_bytes"]
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * (limit + 10)}]}
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=60)
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_over_the_rate_limit_gets_429_with_retry_after_and_other_keys_are_unaffected(stack):
    access = stack.args["access"]
    count = 3 * access["burst_per_key"]
    headers = {"Authorization": f"Bearer {API_KEYS[1]}"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: httpx.get(f"{stack.base_url}/models", headers=headers, timeout=60),
                                  range(count)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= access["burst_per_key"]
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and error_of(limited)["code"] == "rate_limit_exceeded"
    assert httpx.get(f"{stack.base_url}/models", headers=stack.headers, timeout=30).status_code == 200
