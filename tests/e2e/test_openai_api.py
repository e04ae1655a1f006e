"""The OpenAI API as a user sees it: the official SDK (and raw HTTP where the SDK hides details)
against the deployed stack, real engines answering."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import error_of

pytestmark = pytest.mark.e2e

EASY = "What is the capital of France?"
HARD = "Name the author of the novel 'The Brothers Karamazov' and the year it was published."
ROUTES = ["cheap", "strong", "auto"]


CONFIDENCE = {"cascade": {"mode": "confidence"}}
"""The confidence cascade, whatever mode the profile ships for `auto` (the local one takes per-request settings)."""


def chat(client, model, content=EASY, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0, **kwargs)


def test_models_lists_every_route(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"cheap", "strong", "auto", "smollm2-cascade"}


@pytest.mark.parametrize("route", ROUTES)
def test_chat_answers_with_usage_and_routing(client, route):
    raw = chat(client, route)
    response = raw.parse()
    answer = response.choices[0].message.content
    assert answer.strip()
    assert response.model == raw.headers["x-served-by"] and response.model in ("cheap", "strong")
    assert raw.headers["x-route"] == route
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 10
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    if route != "auto":
        assert response.model == route and raw.headers["x-cascade-escalated"] == "false"


def test_strong_tier_knows_the_capital(client):
    assert "Paris" in chat(client, "strong").parse().choices[0].message.content


@pytest.mark.parametrize("route", ROUTES)
def test_chat_stream_matches_the_non_streamed_answer(client, route):
    whole = chat(client, route).parse()
    stream = client.chat.completions.create(
        model=route, messages=[{"role": "user", "content": EASY}], temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.choices[0].finish_reason]
    assert {c.model for c in chunks} == {whole.model}


def test_raw_stream_is_sse_ending_in_done(stack):
    body = {"model": "strong", "messages": [{"role": "user", "content": EASY}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-served-by"] == "strong"
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2][6:])  # not asked for: no usage chunk


@pytest.mark.parametrize("route", ROUTES)
def test_completions_stream_and_not(client, route):
    whole = client.completions.create(model=route, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert whole.choices[0].text and whole.usage.completion_tokens == 8
    chunks = list(client.completions.create(model=route, prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8


def test_easy_prompt_stays_on_the_cheap_tier(client, stack):
    threshold = stack.args["cascade"]["threshold"]
    raw = chat(client, "auto", EASY, max_tokens=48, extra_body=CONFIDENCE)
    assert raw.headers["x-served-by"] == "cheap" and raw.headers["x-cascade-escalated"] == "false"
    assert float(raw.headers["x-cascade-confidence"]) >= threshold


def test_hard_prompt_escalates_to_the_strong_tier(client, stack):
    threshold = stack.args["cascade"]["threshold"]
    raw = chat(client, "smollm2-cascade", HARD, max_tokens=48, extra_body=CONFIDENCE)
    assert raw.headers["x-served-by"] == "strong" and raw.headers["x-cascade-escalated"] == "true"
    assert float(raw.headers["x-cascade-confidence"]) < threshold
    response = raw.parse()
    assert response.model == "strong"
    assert response.choices[0].message.content == chat(client, "strong", HARD, max_tokens=48).parse().choices[0].message.content


def test_escalated_stream_carries_only_the_strong_answer(client):
    strong = chat(client, "strong", HARD, max_tokens=48).parse().choices[0].message.content
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": HARD}], temperature=0, max_tokens=48,
            stream=True, extra_body=CONFIDENCE) as response:
        assert response.headers["x-cascade-escalated"] == "true"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == strong


def test_vllm_sampling_options_reach_the_engine(client):
    response = chat(client, "strong", max_tokens=40, extra_body={"ignore_eos": True, "top_k": 5}).parse()
    assert response.usage.completion_tokens == 40  # ignore_eos honoured: never stops early
    stopped = chat(client, "strong", max_tokens=40, stop=["Paris"]).parse()
    assert "Paris" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as caught:  # vLLM's own check, so it did reach vLLM
        chat(client, "strong", extra_body={"top_k": -5})
    assert "top_k" in caught.value.body["message"]


def test_logprobs_are_returned_when_asked(client):
    response = chat(client, "cheap", max_tokens=6, logprobs=True, top_logprobs=3).parse()
    content = response.choices[0].logprobs.content
    assert len(content) == 6 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == response.choices[0].message.content
    assert chat(client, "cheap", max_tokens=6).parse().choices[0].logprobs is None


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "strong"}, 400, "messages"),
    ({"model": "strong", "messages": []}, 400, "messages"),
    ({"model": "strong", "messages": "hi"}, 400, "messages"),
    ({"model": "strong", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "strong", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}, 400, "max_tokens"),
    ({"model": "strong", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "strong", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
    ({"model": "strong", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "auto", "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
])
def test_bad_input_gets_an_openai_error(stack, body, status, param):
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=60)
    assert response.status_code == status
    error = error_of(response)
    assert error["param"] == param and error["message"]


def test_too_long_prompt_is_a_context_length_error(stack):
    body = {"model": "strong", "messages": [{"role": "user", "content": "word " * 3000}], "stream": True}
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=stack.headers, timeout=60)
    assert response.status_code == 400 and error_of(response)["code"] == "context_length_exceeded"


def test_malformed_json_is_a_400(stack):
    response = httpx.post(f"{stack.base_url}/chat/completions", content=b'{"model": "strong", "mess',
                          headers={"content-type": "application/json", **stack.headers}, timeout=30)
    assert response.status_code == 400 and "JSON" in error_of(response)["message"]


def test_service_still_answers_after_bad_input(client, stack):
    assert httpx.get(f"{stack.http_url}/health", timeout=10).json()["status"] == "ok"
    assert chat(client, "strong", max_tokens=4).parse().usage.completion_tokens == 4
