"""The per-request timeout header: it bounds the whole request, cancels the engine's work, and is checked."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import error_of

pytestmark = pytest.mark.e2e


def long_answer(stack, timeout_header: str, model: str = "strong") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": f"Count to a thousand. ({uuid.uuid4()})"}],
            "max_tokens": 1500, "ignore_eos": True, "temperature": 0}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120,
                      headers={**stack.headers, "x-request-timeout": timeout_header})


def test_a_request_past_its_own_timeout_is_a_504_and_the_engine_stops(stack, serve_handles):
    engine = serve_handles.get_deployment_handle("llm-strong-v1", app_name="llm")
    started = time.monotonic()
    response = long_answer(stack, "3")
    assert response.status_code == 504, response.text
    assert error_of(response)["code"] == "timeout"
    assert time.monotonic() - started < 60  # 1500 tokens would take minutes on this CPU
    deadline = time.monotonic() + 30
    while engine.num_unfinished_requests.remote().result(timeout_s=30) != 0:
        assert time.monotonic() < deadline, "the engine kept generating after the request's timeout"
        time.sleep(0.5)
    # The caller's impatience is not the tier's failure.
    assert httpx.get(f"{stack.http_url}/health", timeout=10).json()["circuits"]["strong"] == "closed"


def test_a_timeout_that_expires_before_any_token_names_itself(stack):
    response = long_answer(stack, "0.001")
    assert response.status_code == 504
    assert "timeout of 0.001 s expired" in error_of(response)["message"]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_timeout_header_is_a_400(stack, value):
    response = long_answer(stack, value)
    assert response.status_code == 400
    assert error_of(response)["param"] == "x-request-timeout"


def test_a_generous_timeout_changes_nothing(stack):
    body = {"model": "cheap", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0}
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120,
                          headers={**stack.headers, "x-request-timeout": "120"})
    assert response.status_code == 200 and response.headers["x-served-by"] == "cheap"
