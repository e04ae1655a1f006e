"""The request ledger over the router with fake backends: attempts, outcomes, costs, and spans
(an in-memory exporter) that form one connected trace."""

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from serve_app.config import AppConfig
from serve_app.core.errors import BackendUnavailable, InvalidRequest, Overloaded
from serve_app.core.ledger import Ledger
from serve_app.ingress.lifecycle import watched
from serve_app.observability import tracing
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import Clock, FakeTier, request, run

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process; this module is the only one that sets it


@pytest.fixture(autouse=True)
def fresh_spans():
    EXPORTER.clear()


class MeteredTier(FakeTier):
    """A fake engine that reports half a replica-second per chunk, as the engine's meter would."""

    async def __call__(self, request):
        async for chunk in super().__call__(request):
            chunk.replica_seconds = 0.5 * chunk.completion_tokens
            yield chunk


def make(cheap_prob=0.9, fallbacks=None, **errors):
    tier = {"model": {"source": "/m"}, "limits": {"concurrency_slots": 2, "dispatch_timeout_s": None}}
    config = AppConfig.model_validate({
        "tiers": {"cheap": {**tier, "price": {"usd_per_replica_hour": 3.6}},
                  "strong": {**tier, "price": {"usd_per_replica_hour": 36.0}}},
        "external": {"api": {"base_url": "http://x/v1", "model": "m", "price": {"usd_per_million_input_tokens": 1e3,
                                                                               "usd_per_million_output_tokens": 2e3}}},
        "cascade": {"threshold": 0.5},
        "resilience": {"fallbacks": fallbacks or {}, "retry_attempts": 1},
    })
    backends = {"cheap": MeteredTier(["Paris", "."], cheap_prob, errors.get("cheap")),
                "strong": MeteredTier(["Lyon", "!"], 0.9, errors.get("strong")),
                "api": FakeTier(["Rome", "?"], 0.9, errors.get("api"))}
    return build_router(backends, config, Clock()), backends


def serve(router, model, on_end=lambda ledger: None):
    """What the router deployment does: a request span around routing, the ledger watched to the end."""

    async def go():
        ledger = Ledger(0.0)
        span = tracing.start_request("chat", model, tracing.extract({"traceparent": PARENT}), None, {"max_tokens": 8})
        try:
            with trace.use_span(span, end_on_exit=False):
                stream = await router.open(model, request(), ledger=ledger)
        except Exception as exc:
            ledger.failed(exc)
            tracing.end_request(span, ledger)
            return ledger
        ledger.routed(stream.routing)

        def end(done):
            on_end(done)
            tracing.end_request(span, done)

        text = "".join([c.text async for c in watched(stream.chunks, ledger, lambda: 1.0, end)])
        return ledger, text

    return run(go())


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


def spans_by_name():
    return {span.name: span for span in EXPORTER.get_finished_spans()}


def test_a_direct_request_is_one_attempt_priced_by_replica_time():
    router, _ = make()
    ledger, text = serve(router, "strong")
    assert text == "Lyon!" and ledger.outcome == "served"
    (attempt,) = ledger.attempts
    assert (attempt.backend, attempt.number, attempt.error) == ("strong", 1, None)
    assert (attempt.input_tokens, attempt.output_tokens, attempt.replica_seconds) == (3, 2, 1.0)
    assert ledger.cost_usd == pytest.approx(36.0 / 3600)
    assert (ledger.input_tokens, ledger.output_tokens, ledger.finish_reason) == (3, 2, "stop")


def test_an_escalated_request_pays_for_both_attempts_and_traces_both():
    router, backends = make(cheap_prob=0.1)
    ledger, text = serve(router, "auto")
    assert text == "Lyon!" and ledger.outcome == "escalated"
    assert [a.backend for a in ledger.attempts] == ["cheap", "strong"]
    assert ledger.cost_usd == pytest.approx(3.6 / 3600 + 36.0 / 3600)
    spans = spans_by_name()
    root, cheap, strong = spans["chat auto"], spans["attempt cheap"], spans["attempt strong"]
    assert {s.context.trace_id for s in spans.values()} == {TRACE_ID}   # the client's trace
    assert root.parent.span_id == 0xB7AD6B7169203331 and root.kind is SpanKind.SERVER
    assert cheap.parent.span_id == root.context.span_id == strong.parent.span_id
    assert root.attributes["serve_app.escalated"] is True and root.attributes["serve_app.served_by"] == "strong"
    assert root.attributes["gen_ai.usage.output_tokens"] == 2 and root.attributes["gen_ai.request.model"] == "auto"
    assert root.attributes["serve_app.cost_usd"] == pytest.approx(ledger.cost_usd)
    assert cheap.attributes["gen_ai.usage.output_tokens"] == 2 and cheap.kind is SpanKind.CLIENT
    # Each backend was handed the W3C context of its own attempt span, for the engine's span.
    sent = backends["strong"].requests[0].trace_context["traceparent"]
    assert sent.split("-")[1:3] == [f"{TRACE_ID:032x}", f"{strong.context.span_id:016x}"]


def test_a_fallback_records_the_failed_attempt_and_its_reason():
    router, _ = make(fallbacks={"strong": ["api"]}, strong=BackendUnavailable("down"))
    ledger, text = serve(router, "strong")
    assert text == "Rome?" and ledger.outcome == "fallback"
    assert [(a.backend, a.error) for a in ledger.attempts] == [("strong", "backend_unavailable"), ("api", None)]
    assert ledger.cost_usd == pytest.approx((3 * 1e3 + 2 * 2e3) / 1e6)  # the API's token prices
    failed = spans_by_name()["attempt strong"]
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["error.type"] == "backend_unavailable"


@pytest.mark.parametrize(("error", "outcome"), [(Overloaded("full"), "shed"), (BackendUnavailable("down"), "failed"),
                                                (InvalidRequest("bad"), "rejected")])
def test_a_request_that_gets_no_answer_says_why(error, outcome):
    router, _ = make(strong=error)
    ledger = serve(router, "strong")
    assert ledger.outcome == outcome and ledger.routing is None
    assert spans_by_name()["chat strong"].attributes["error.type"] == error.code


def test_watched_marks_a_stream_the_client_abandoned():
    router, _ = make()

    async def go():
        ledger = Ledger(0.0)
        stream = await router.open("strong", request(), ledger=ledger)
        ledger.routed(stream.routing)
        ended = []
        chunks = watched(stream.chunks, ledger, lambda: 1.0, ended.append)
        await anext(chunks)
        await chunks.aclose()
        return ledger, ended

    ledger, ended = run(go())
    assert ended == [ledger] and ledger.outcome == "cancelled"
    assert ledger.attempts[0].error == "cancelled"


def test_tpot_and_ttft_come_from_first_byte_and_end():
    ledger = Ledger(10.0, first_byte_s=10.5, finished_s=12.5, output_tokens=5)
    assert (ledger.ttft_s, ledger.e2e_s, ledger.tpot_s) == (0.5, 2.5, 0.5)
    assert Ledger(0.0, first_byte_s=1.0, finished_s=2.0, output_tokens=1).tpot_s is None


def test_content_is_on_the_span_only_when_the_caller_passes_it():
    messages = [{"role": "user", "content": "secret"}]
    recorded = tracing.start_request("chat", "cheap", tracing.extract({}), messages, {"max_tokens": 4})
    tracing.end_request(recorded, Ledger(0.0), output="answer")
    plain = tracing.start_request("chat", "cheap", tracing.extract({}), None, {"max_tokens": 4})
    tracing.end_request(plain, Ledger(0.0))
    first, second = EXPORTER.get_finished_spans()
    assert first.attributes["gen_ai.input.messages"] == '[{"role": "user", "content": "secret"}]'
    assert first.attributes["gen_ai.output.messages"] == '[{"role": "assistant", "content": "answer"}]'
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in second.attributes)


@pytest.mark.parametrize(("error", "outcome"), [(asyncio.CancelledError(), "cancelled"), (GeneratorExit(), "cancelled"),
                                                (KeyError("bug"), "failed"), (Overloaded("full"), "shed")])
def test_how_a_request_that_raised_ended(error, outcome):
    ledger = Ledger(0.0)
    ledger.failed(error)
    assert ledger.outcome == outcome


def test_backends_opened_while_an_answer_streams_are_attempts_of_its_trace():
    from serve_app.api.access import KeyGate
    from serve_app.api.protocol import ChatCompletionRequest
    from serve_app.ingress.service import ApiService
    from tests.serve_app.fakes import TokenModel

    tier = {"model": {"source": "/m"}, "limits": {"concurrency_slots": 2}}
    config = AppConfig.model_validate({"tiers": {"cheap": tier, "strong": tier}, "cascade": {"mode": "speculative"}})
    strong = [5, 6, 7, 8, 9, 0]
    router = build_router({"cheap": TokenModel([5, 6, 1, 8, 9, 0]), "strong": TokenModel(strong)}, config, Clock())
    api = ApiService(config, router, KeyGate([], None, None, Clock()))

    async def go():
        stream = await api.open(ChatCompletionRequest(model="auto", messages=[{"role": "user", "content": "q"}]))
        return [chunk async for chunk in stream.chunks]

    chunks = run(go())
    assert [t for c in chunks for t in c.token_ids] == strong
    spans = EXPORTER.get_finished_spans()
    (root,) = [s for s in spans if s.name == "chat auto"]
    attempts = [s for s in spans if s.name.startswith("attempt")]
    assert len(attempts) == 1 + 2 * chunks[-1].speculation["passes"]  # the opening token, then drafts and passes
    assert all(s.parent.span_id == root.context.span_id and s.context.trace_id == root.context.trace_id
               for s in attempts)
