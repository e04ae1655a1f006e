"""The router over fake backends: route selection, the buffered cascade, error surfacing."""

import asyncio

import pytest

from serve_app.config import AppConfig
from serve_app.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    ContextLengthExceeded,
    ModelNotFound,
    Overloaded,
    ServerError,
)
from serve_app.core.generation import Accepted, GenerationChunk
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import Clock, FakeTier, request, run


def open_and_drain(router, model, req):
    """Open and read a route in one event loop (asyncio.run closes open generators when it ends)."""

    async def go():
        stream = await router.open(model, req)
        return stream, [chunk async for chunk in stream.chunks]

    return run(go())


def config(threshold=0.5, fallbacks=None, first_token_timeout_s=60.0, threshold_failures=5, shed_s=None, retries=1,
           dispatch_s=None):
    tier = {"model": {"source": "/models/x"}, "deployment": {"max_ongoing_requests": 2},  # a batch of 2
            "limits": {"first_token_timeout_s": first_token_timeout_s, "concurrency_slots": 8,
                       "dispatch_timeout_s": dispatch_s}}
    return AppConfig.model_validate({
        "model_alias": "my-alias", "tiers": {"cheap": tier, "strong": tier},
        "cascade": {"threshold": threshold},
        "resilience": {"fallbacks": fallbacks or {}, "breaker_failure_threshold": threshold_failures,
                       "breaker_cooldown_s": 10.0, "shed_ttft_target_s": shed_s, "retry_attempts": retries,
                       "retry_initial_backoff_s": 0.001, "retry_max_backoff_s": 0.002},
    })


def make(cheap_prob=0.9, strong_prob=0.9, threshold=0.5, fallbacks=None, delays=None, clock=None, shed_s=None,
         retries=1, dispatch_s=None, backends=None, **errors):
    """A router over two fake tiers (`backends` replaces either with another fake)."""
    delays = delays or {}
    cheap = FakeTier(["Paris", "."], cheap_prob, errors.get("cheap"), delays.get("cheap", 0.0))
    strong = FakeTier(["Lyon", "!"], strong_prob, errors.get("strong"), delays.get("strong", 0.0))
    router = build_router({"cheap": cheap, "strong": strong, **(backends or {})},
                           config(threshold, fallbacks, first_token_timeout_s=0.2, threshold_failures=2, shed_s=shed_s,
                                  retries=retries, dispatch_s=dispatch_s),
                           clock or Clock())
    return router, cheap, strong


def breakers(router):
    return {name: state.value for name, (state, *_) in router.fleet.states().items()}


def test_direct_route_streams_that_tier_only():
    router, cheap, strong = make()
    stream, chunks = open_and_drain(router, "strong", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.served_by == "strong" and not stream.routing.escalated
    assert cheap.requests == []


@pytest.mark.parametrize("model", ["auto", "my-alias"])
def test_confident_cheap_answer_is_kept_without_calling_strong(model):
    router, cheap, strong = make(cheap_prob=0.9, threshold=0.5)
    stream, chunks = open_and_drain(router, model, request())
    assert "".join(c.text for c in chunks) == "Paris."
    assert stream.routing.model_dump() == {
        "route": "auto", "served_by": "cheap", "escalated": False, "confidence": pytest.approx(0.9),
        "reason": "confident", "fallback_reason": None, "version": "v1", "speculation": None,
        "verification": None, "plan": "confidence", "plan_reason": "configured"}
    assert strong.requests == []


def test_cascade_asks_cheap_for_logprobs_but_returns_none_when_caller_did_not():
    router, cheap, _ = make(cheap_prob=0.9)
    _, chunks = open_and_drain(router, "auto", request(logprobs=None))
    assert cheap.requests[0].sampling["logprobs"] == 0
    assert all(c.logprobs is None for c in chunks)


def test_cascade_keeps_logprobs_the_caller_asked_for():
    router, cheap, _ = make(cheap_prob=0.9)
    _, chunks = open_and_drain(router, "auto", request(logprobs=2))
    assert cheap.requests[0].sampling["logprobs"] == 2
    assert all(c.logprobs for c in chunks)


def test_unsure_cheap_answer_escalates_and_only_strong_answer_is_streamed():
    router, cheap, strong = make(cheap_prob=0.2, threshold=0.5)
    stream, chunks = open_and_drain(router, "auto", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.served_by == "strong" and stream.routing.escalated
    assert stream.routing.confidence == pytest.approx(0.2)
    assert strong.requests[0].sampling["logprobs"] is None
    assert strong.requests[0].request_id != cheap.requests[0].request_id


def test_unknown_model_lists_the_routes():
    router, _, _ = make()
    with pytest.raises(ModelNotFound) as caught:
        router.resolve("gpt-9")
    assert caught.value.param == "model"
    for name in ("auto", "my-alias", "cheap", "strong"):
        assert name in caught.value.message


def test_engine_error_is_raised_by_open_before_any_chunk():
    router, _, _ = make(strong=ContextLengthExceeded("too long", param="messages"))
    with pytest.raises(ContextLengthExceeded):
        run(router.open("strong", request()))


def test_closing_a_direct_stream_closes_the_backend():
    router, _, strong = make()

    async def read_one_then_close():
        stream = await router.open("strong", request())
        first = await anext(stream.chunks)
        await stream.chunks.aclose()
        return first

    assert run(read_one_then_close()).text == "Lyon"
    assert strong.closed == 1


def test_server_error_falls_back_down_the_chain_and_says_why():
    router, _, strong = make(fallbacks={"cheap": ["strong"]}, cheap=ServerError("boom"))
    stream, chunks = open_and_drain(router, "cheap", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.route == "cheap" and stream.routing.served_by == "strong"
    assert stream.routing.fallback_reason == "cheap: internal_error"
    assert strong.requests[0].request_id == "r1-strong-1"


def test_client_error_never_falls_back():
    router, _, strong = make(fallbacks={"cheap": ["strong"]}, cheap=ContextLengthExceeded("too long"))
    with pytest.raises(ContextLengthExceeded):
        open_and_drain(router, "cheap", request())
    assert strong.requests == []


def test_without_a_fallback_a_failure_is_a_503_naming_what_failed():
    router, _, _ = make(strong=ServerError("boom"))
    with pytest.raises(BackendUnavailable, match="strong: internal_error"):
        open_and_drain(router, "strong", request())


def test_first_token_timeout_cancels_the_slow_tier_and_falls_back():
    router, cheap, _ = make(fallbacks={"cheap": ["strong"]}, delays={"cheap": 5.0})
    stream, chunks = open_and_drain(router, "cheap", request())
    assert stream.routing.served_by == "strong" and stream.routing.fallback_reason == "cheap: timeout"
    assert cheap.closed == 1  # the slow generation was cancelled, not left running


def test_the_callers_timeout_bounds_the_whole_chain_and_spares_the_breaker():
    router, cheap, strong = make(fallbacks={"cheap": ["strong"]}, delays={"cheap": 5.0, "strong": 5.0})

    async def go():
        await router.open("cheap", request(), timeout_s=0.05)

    with pytest.raises(BackendTimeout, match="timeout of 0.05 s expired") as caught:
        run(go())
    assert caught.value.status == 504
    assert cheap.closed == 1 and strong.requests == []  # no time was left for the fallback
    assert breakers(router) == {"cheap": "closed", "strong": "closed"}
    assert router.fleet["cheap"].breaker.failures == 0  # not counted as a failure of the tier


def test_a_callers_timeout_longer_than_the_tiers_does_not_extend_it():
    router, _, _ = make(fallbacks={"cheap": ["strong"]}, delays={"cheap": 5.0})

    async def go():
        stream = await router.open("cheap", request(), timeout_s=30.0)
        return stream.routing

    routing = run(go())
    assert routing.served_by == "strong" and routing.fallback_reason == "cheap: timeout"


class Unanswered:
    """A tier whose calls nobody takes (its replica died; Ray Serve holds them for a replacement)."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, request):
        self.calls += 1
        await asyncio.sleep(60)
        yield  # pragma: no cover


class AcceptsThenStalls:
    """A live replica that takes the request and then is slow to produce its first token."""

    async def __call__(self, request):
        yield Accepted()
        await asyncio.sleep(60)
        yield  # pragma: no cover


def test_a_request_no_replica_takes_fails_over_after_the_dispatch_timeout_without_retry():
    dead = Unanswered()
    router, _, _ = make(fallbacks={"cheap": ["strong"]}, dispatch_s=0.02, retries=3, backends={"cheap": dead})
    stream, chunks = open_and_drain(router, "cheap", request())
    assert stream.routing.served_by == "strong" and stream.routing.fallback_reason == "cheap: no_live_replica"
    assert dead.calls == 1  # the same dead tier is not tried again
    assert router.fleet["cheap"].breaker.failures == 1


def test_an_accepted_request_gets_the_full_first_token_timeout():
    router, _, _ = make(fallbacks={"cheap": ["strong"]}, dispatch_s=0.02, backends={"cheap": AcceptsThenStalls()})
    stream, _ = open_and_drain(router, "cheap", request())
    assert stream.routing.fallback_reason == "cheap: timeout"  # 0.2 s first-token timeout, not 0.02 s


def test_with_every_slot_busy_waiting_for_a_replica_is_queueing_not_death():
    router, _, _ = make(fallbacks={"cheap": ["strong"]}, dispatch_s=0.02, backends={"cheap": Unanswered()})
    saturate(router, "cheap", in_flight=2)  # Ray Serve queues the request until a slot frees
    stream, _ = open_and_drain(router, "cheap", request())
    assert stream.routing.fallback_reason == "cheap: timeout"
    assert router.fleet["cheap"].breaker.failures == 0  # late because of the service's own queue: no fault


def test_overload_is_not_a_fault_and_never_opens_a_breaker():
    full = Flaky(["ok"], failures=10, error=Overloaded("tier 'strong' is at capacity: its replicas' queues are full"))
    router, _, _ = make(fallbacks={"strong": ["cheap"]}, backends={"strong": full})  # the breaker opens at 2
    for _ in range(5):
        stream, _ = open_and_drain(router, "strong", request())
        assert stream.routing.fallback_reason == "strong: overloaded"
    assert breakers(router)["strong"] == "closed" and router.fleet["strong"].breaker.failures == 0
    assert len(full.requests) == 5  # each refusal was the tier's, none the breaker's


def test_a_late_first_token_with_a_slot_free_is_a_fault():
    router, _, _ = make(fallbacks={"cheap": ["strong"]}, delays={"cheap": 5.0})
    open_and_drain(router, "cheap", request())
    assert router.fleet["cheap"].breaker.failures == 1


def test_accepted_markers_never_reach_the_caller():
    class Acking(FakeTier):
        async def __call__(self, request):
            yield Accepted()
            async for chunk in super().__call__(request):
                yield chunk

    router, _, _ = make(dispatch_s=1.0, backends={"strong": Acking(["Lyon", "!"], 0.9)})
    _, chunks = open_and_drain(router, "strong", request())
    assert all(isinstance(c, GenerationChunk) for c in chunks) and "".join(c.text for c in chunks) == "Lyon!"


def test_breaker_opens_after_repeated_failures_and_fails_fast():
    clock = Clock()
    router, cheap, _ = make(fallbacks={"cheap": ["strong"]}, clock=clock, cheap=ServerError("boom"))
    for _ in range(2):
        open_and_drain(router, "cheap", request())
    assert breakers(router)["cheap"] == "open"
    stream, _ = open_and_drain(router, "cheap", request())
    assert stream.routing.fallback_reason == "cheap: circuit_open"
    assert len(cheap.requests) == 2  # the open circuit kept the third request away from the tier
    clock.now = 10.0
    cheap.error = None
    stream, _ = open_and_drain(router, "cheap", request())  # the probe succeeds and closes the circuit
    assert stream.routing.served_by == "cheap" and breakers(router)["cheap"] == "closed"


def test_cascade_serves_the_cheap_answer_when_escalation_fails():
    router, _, _ = make(cheap_prob=0.2, strong=ServerError("boom"))
    stream, chunks = open_and_drain(router, "auto", request())
    assert "".join(c.text for c in chunks) == "Paris."
    assert stream.routing.served_by == "cheap" and stream.routing.escalated
    assert stream.routing.fallback_reason == "strong: internal_error"


def test_cascade_falls_back_to_strong_when_cheap_fails():
    router, _, _ = make(fallbacks={"auto": ["strong"]}, cheap=ServerError("boom"))
    stream, chunks = open_and_drain(router, "auto", request())
    assert stream.routing.route == "auto" and stream.routing.served_by == "strong"
    assert stream.routing.fallback_reason == "auto: internal_error"


def saturate(router, tier, in_flight, ttft_s=1.0, tpot_s=0.4):
    """`in_flight` requests of 10 tokens on `tier` (a batch of 2), none of which has produced a token yet."""
    load = router.fleet[tier].load
    load.ttft.add(ttft_s)
    load.tpot.add(tpot_s)
    for _ in range(in_flight):
        load.started(max_tokens=10)


def test_overloaded_tier_sheds_with_retry_after_before_calling_it():
    router, _, strong = make(shed_s=5.0)
    # The batch is full and two wait: the newcomer starts when the second of them does, after two
    # answers of 10 tokens in a row on one slot: wait 1 + 20 tokens * 0.4 s = 9 s against a 5 s target.
    saturate(router, "strong", in_flight=4)
    with pytest.raises(Overloaded) as caught:
        open_and_drain(router, "strong", request())
    assert caught.value.status == 503 and caught.value.headers() == {"Retry-After": "4"}
    assert strong.requests == []


def test_overload_falls_back_to_a_tier_with_room():
    router, _, _ = make(shed_s=5.0, fallbacks={"strong": ["cheap"]})
    saturate(router, "strong", in_flight=4)
    stream, _ = open_and_drain(router, "strong", request())
    assert stream.routing.served_by == "cheap" and stream.routing.fallback_reason == "strong: overloaded"


def test_low_priority_is_shed_where_normal_is_admitted():
    router, _, _ = make(shed_s=5.0)
    saturate(router, "strong", in_flight=1, ttft_s=3.0)  # wait 3 s: over low's 2.5 s budget
    with pytest.raises(Overloaded):
        run(router.open("strong", request(), priority="low"))
    stream, _ = open_and_drain(router, "strong", request())
    assert stream.routing.served_by == "strong"


def test_in_flight_count_returns_to_zero_after_streams_end_or_fail():
    router, _, _ = make(shed_s=5.0, fallbacks={"cheap": ["strong"], "auto": ["strong"]}, cheap=ServerError("boom"))
    open_and_drain(router, "cheap", request())
    open_and_drain(router, "auto", request())
    assert router.fleet["cheap"].load.in_flight == 0 and router.fleet["strong"].load.in_flight == 0


class Flaky(FakeTier):
    """Fails its first `failures` calls with `error`, then answers."""

    def __init__(self, words, failures, error):
        super().__init__(words, 0.9)
        self.failures, self.fail_with = failures, error

    async def __call__(self, request):
        if self.failures:
            self.failures -= 1
            self.requests.append(request)
            raise self.fail_with
        async for chunk in super().__call__(request):
            yield chunk


def test_a_transient_engine_error_is_retried_on_the_same_tier():
    flaky = Flaky(["ok"], failures=1, error=BackendUnavailable("replica died"))
    router, _, _ = make(retries=3, backends={"strong": flaky})
    stream, chunks = open_and_drain(router, "strong", request())
    assert stream.routing.served_by == "strong" and stream.routing.fallback_reason is None
    assert [r.request_id for r in flaky.requests] == ["r1-strong-1", "r1-strong-2"]
    assert "".join(c.text for c in chunks) == "ok"


def test_retries_are_bounded_then_the_chain_moves_on():
    flaky = Flaky(["ok"], failures=5, error=ServerError("engine error"))
    router, _, _ = make(retries=2, fallbacks={"strong": ["cheap"]}, backends={"strong": flaky})
    stream, _ = open_and_drain(router, "strong", request())
    assert len(flaky.requests) == 2 and stream.routing.served_by == "cheap"


@pytest.mark.parametrize("error", [Overloaded("busy"), ContextLengthExceeded("long")])
def test_overload_and_client_errors_are_not_retried(error):
    flaky = Flaky(["ok"], failures=5, error=error)
    router, _, _ = make(retries=3, backends={"strong": flaky})
    with pytest.raises(type(error)):
        open_and_drain(router, "strong", request())
    assert len(flaky.requests) == 1


def test_when_everything_fails_a_recent_answer_is_served_from_the_cache():
    router, cheap, strong = make(fallbacks={"strong": ["cheap"]})
    first, _ = open_and_drain(router, "strong", request())
    assert first.routing.served_by == "strong"
    strong.error = cheap.error = ServerError("down")
    stream, chunks = open_and_drain(router, "strong", request())
    assert "".join(c.text for c in chunks) == "Lyon!"
    assert stream.routing.served_by == "cache"
    assert stream.routing.fallback_reason == "strong: internal_error; cheap: internal_error; cached answer from strong"


def test_an_unseen_request_still_fails_when_everything_fails():
    router, _, _ = make(strong=ServerError("down"))
    with pytest.raises(BackendUnavailable):
        open_and_drain(router, "strong", request())


def test_a_tiers_capacity_follows_its_running_replicas():
    router, _, _ = make()
    states = router.fleet.states()
    assert states["cheap"][2] == 2                    # 2 slots per replica, 1 replica to start with
    router.fleet.resize("cheap", 3)
    assert router.fleet.states()["cheap"][2] == 6
    router.fleet.resize("cheap", 0)                   # none running: one replica's worth stands in
    assert router.fleet.states()["cheap"][2] == 2
