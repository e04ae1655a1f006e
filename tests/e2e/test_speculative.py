"""The speculative and verified cascades on the real stack (a request's own `cascade` settings, which
the local profile allows): at alpha 0 and temperature 0 the streamed speculative answer is the `strong`
route's answer, token for token (or differs first at a near-tie the test reports), every draft and
verification pass is an attempt in the request's trace with its engine span, and the answer's usage and
speculation figures agree; the verified cascade serves the cheap answer or the strong one as the strong
tier's verdict on it says, and bills the verification."""

from __future__ import annotations

import secrets

import pytest

from scripts.harness.cluster import wait_for
from scripts.harness.eval_data import eval_items

pytestmark = pytest.mark.e2e

SPECULATIVE = {"cascade": {"mode": "speculative", "alpha": 0.0, "draft_tokens": 4}}
NEAR_TIE = 0.01
"""Top-two log-probabilities closer than this: a prefill and a decode step may rank them differently."""


def sample_prompts() -> list[str]:
    kinds: dict[str, str] = {}
    for item in eval_items():
        kinds.setdefault(item["kind"], item["prompt"])
    return list(kinds.values())  # one of each kind: arithmetic, capital, sentiment, instruction, fact


def speculative_stream(client, prompt: str, cascade: dict | None = None, **kwargs):
    chunks = list(client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, extra_body={"cascade": SPECULATIVE["cascade"] | (cascade or {})},
        **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, chunks, final[-1]


def first_divergence_is_a_near_tie(strong_logprobs, text: str) -> bool:
    """Where `text` first leaves the strong answer, the strong model's top two were nearly tied."""
    served = ""
    for token in strong_logprobs:
        if not text.startswith(served + token.token):
            top = sorted((t.logprob for t in token.top_logprobs), reverse=True)
            return len(top) > 1 and top[0] - top[1] < NEAR_TIE
        served += token.token
    return False


def strong_answer(client, prompt: str):
    """The `strong` route's greedy answer, with the top two log-probabilities of each token."""
    return client.chat.completions.create(model="strong", messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=24, logprobs=True, top_logprobs=2)


def assert_is_the_strong_answer(text: str, strong) -> None:
    """`text` is the strong answer, or leaves it only where the strong model's top two nearly tied."""
    expected = strong.choices[0].message.content
    assert text == expected or first_divergence_is_a_near_tie(strong.choices[0].logprobs.content, text), (text, expected)


@pytest.mark.parametrize("prompt", sample_prompts())
def test_at_alpha_zero_the_speculative_answer_is_the_strong_answer(client, prompt):
    strong = strong_answer(client, prompt)
    text, chunks, final = speculative_stream(client, prompt)
    assert_is_the_strong_answer(text, strong)
    routing = chunks[0].model_extra["routing"]
    assert routing["route"] == "auto" and routing["served_by"] == "strong" and routing["reason"] == "speculative"
    speculation = final.model_extra["routing"]["speculation"]
    usage = chunks[-1].usage
    assert speculation["passes"] >= 1 and not speculation["strong_failed"] and not speculation["cheap_failed"]
    assert speculation["accepted"] + speculation["replaced"] + speculation["added"] == usage.completion_tokens
    assert speculation["accepted"] <= speculation["drafted"]
    if text == strong.choices[0].message.content:
        assert usage.completion_tokens == strong.usage.completion_tokens
        assert final.choices[0].finish_reason == strong.choices[0].finish_reason
    held = usage.model_extra["replica_seconds"]
    assert held["cheap"] > 0 and held["strong"] > 0 and usage.model_extra["cost_usd"] > 0


def test_drafts_end_where_the_cheap_tier_is_unsure_and_the_answer_stays_the_strong_answer(client):
    # At a stop probability of 0.9 the pruned cheap model ends a draft after nearly every token; an engine
    # that ignored the floor would draft whole blocks of 8 (no cut).
    prompt = sample_prompts()[3]  # an instruction: a long answer
    strong = strong_answer(client, prompt)
    text, chunks, final = speculative_stream(client, prompt, {"draft_tokens": 8, "draft_stop_prob": 0.9})
    assert_is_the_strong_answer(text, strong)
    speculation = final.model_extra["routing"]["speculation"]
    assert speculation["cut"] >= 1 and speculation["drafted"] < 8 * speculation["passes"], speculation
    assert speculation["accepted"] + speculation["replaced"] + speculation["added"] == chunks[-1].usage.completion_tokens


def test_every_pass_is_an_attempt_in_the_trace(client, stack):
    trace_id = secrets.token_hex(16)
    _, _, final = speculative_stream(client, sample_prompts()[1],
                                     extra_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    speculation = final.model_extra["routing"]["speculation"]

    def complete():
        spans = stack.spans.trace(trace_id)
        engines = [s for s in spans if s.name.startswith("generate")]
        whole = len(engines) >= 2 * speculation["passes"] + 1  # the opening token, then a draft and a verification
        return spans if whole and any(s.name == "chat auto" for s in spans) else None

    try:
        spans = wait_for("the request's spans at the collector", complete, timeout_s=180, every_s=1)
    except TimeoutError:
        pytest.fail(f"{speculation}: {sorted(s.name for s in stack.spans.trace(trace_id))}")
    (root,) = [s for s in spans if s.name == "chat auto"]
    strong = [s for s in spans if s.name == "attempt strong"]
    cheap = [s for s in spans if s.name == "attempt cheap"]
    assert len(strong) == speculation["passes"] + 1 and len(cheap) == speculation["passes"]  # + the opening token
    assert all(s.parent_span_id == root.span_id for s in strong + cheap)
    verifying = [s for s in spans if s.attributes.get("serve_app.verified_tokens")]
    assert len(verifying) == speculation["passes"]
    assert sum(s.attributes["serve_app.verified_tokens"] for s in verifying) == speculation["drafted"]
    assert {s.parent_span_id for s in verifying} < {s.span_id for s in strong}
    assert root.attributes["serve_app.cost_usd"] > 0


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_the_verified_cascade_serves_what_the_strong_tiers_verdict_decides(client, threshold):
    prompt = sample_prompts()[0]

    def ask(model, extra=None):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                              temperature=0, max_tokens=24, extra_body=extra)

    cheap, strong = ask("cheap"), ask("strong")
    verified = ask("auto", {"cascade": {"mode": "verified", "verifier": "accepted_prefix", "threshold": threshold}})
    routing = verified.model_extra["routing"]
    verdict = routing["verification"]
    assert verdict["tokens"] > 0 and set(verdict) == {"accepted_share", "accepted_prefix", "strong_mean_prob", "tokens"}
    assert all(0.0 <= verdict[name] <= 1.0 for name in ("accepted_share", "accepted_prefix", "strong_mean_prob"))
    assert routing["confidence"] == pytest.approx(verdict["accepted_prefix"], abs=1e-6)
    escalated = verdict["accepted_prefix"] < threshold  # never at threshold 0; unless the strong model agrees, at 1
    assert routing["escalated"] is escalated and routing["served_by"] == ("strong" if escalated else "cheap")
    assert verified.choices[0].message.content == (strong if escalated else cheap).choices[0].message.content
    held = verified.usage.model_extra["replica_seconds"]
    assert held["cheap"] > 0 and held["strong"] > 0  # the verification pass is billed to the strong tier
