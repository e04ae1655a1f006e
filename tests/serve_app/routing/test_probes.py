"""Every way a request through a half-open breaker can end, over fake backends: the breaker closes or opens
again, and never stays half-open with nothing in flight. And tiers with no running replica: refused at once
as starting (never counted against the breaker), probed at once when a replica comes up."""

import asyncio

import pytest

from serve_app.config import AppConfig
from serve_app.core.errors import BackendUnavailable, CircuitOpen, Overloaded, TierStarting
from serve_app.routing.circuit_breaker import BreakerState
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import EOS, Clock, FakeTier, TokenModel, cascade_router, request, run

COOLDOWN_S = 10.0


def router_over(cheap, strong, fallbacks=None, shed_s=None, first_token_timeout_s=0.2, strong_deployment=None):
    tier = {"model": {"source": "/models/x"}, "deployment": {"max_ongoing_requests": 2},
            "limits": {"first_token_timeout_s": first_token_timeout_s, "concurrency_slots": 8,
                       "dispatch_timeout_s": None, "expected_start_s": 90}}
    strong_tier = {**tier, "deployment": strong_deployment or tier["deployment"]}
    config = AppConfig.model_validate({
        "tiers": {"cheap": tier, "strong": strong_tier},
        "resilience": {"fallbacks": fallbacks or {}, "breaker_failure_threshold": 2, "breaker_cooldown_s": COOLDOWN_S,
                       "shed_ttft_target_s": shed_s, "retry_attempts": 1}})
    clock = Clock()
    return build_router({"cheap": cheap, "strong": strong}, config, clock), clock


def half_open(router, clock, tier):
    """Open the tier's circuit and let its cool-down pass: the next request is its probe."""
    breaker = router.fleet[tier].breaker
    for _ in range(2):
        breaker.enter().failed()
    clock.now += COOLDOWN_S
    return breaker


def drain(router, model, req=None, **kwargs):
    async def go():
        stream = await router.open(model, req or request(), **kwargs)
        return stream.routing, [chunk async for chunk in stream.chunks]

    return run(go())


def settled(breaker):
    """Closed or open: never half-open with its probe taken and nothing in flight."""
    return breaker.state is not BreakerState.HALF_OPEN or not breaker.probing


def test_a_probe_that_succeeds_closes_the_circuit():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9))
    breaker = half_open(router, clock, "cheap")
    routing, _ = drain(router, "cheap")
    assert routing.served_by == "cheap" and breaker.state is BreakerState.CLOSED


def test_a_probe_that_fails_opens_it_again():
    router, clock = router_over(FakeTier(["Paris"], 0.9, error=BackendUnavailable("replica lost")),
                                FakeTier(["Lyon"], 0.9), fallbacks={"cheap": ["strong"]})
    breaker = half_open(router, clock, "cheap")
    routing, _ = drain(router, "cheap")
    assert routing.served_by == "strong" and breaker.state is BreakerState.OPEN


def test_a_request_refused_at_admission_leaves_the_probe_to_the_next_one():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), fallbacks={"cheap": ["strong"]},
                                shed_s=1.0)
    breaker = half_open(router, clock, "cheap")
    load = router.fleet["cheap"].load
    load.ttft.add(5.0)  # a newcomer would wait 5 s against a 1 s target: shed before the breaker
    ticket = load.started(max_tokens=10)
    routing, _ = drain(router, "cheap")
    assert routing.fallback_reason == "cheap: overloaded" and settled(breaker)
    load.finished(ticket, completed=False)
    load.ttft.value = 0.1
    routing, _ = drain(router, "cheap")
    assert routing.served_by == "cheap" and breaker.state is BreakerState.CLOSED


def test_a_reserved_answer_spends_its_probe_on_its_first_pass():
    """The speculative answer takes the strong tier's probe when it reserves its place; its first pass is
    that probe (it was refused with circuit_open before, and the probe was never given back)."""
    cheap, strong = TokenModel([5, 6, 7]), TokenModel([5, 6, 7])
    router = cascade_router(cheap, strong, mode="speculative", draft_tokens=2)
    clock = router._clock
    breaker = router.fleet["strong"].breaker
    for _ in range(5):
        breaker.enter().failed()
    assert breaker.state is BreakerState.OPEN
    clock.now += 60.0
    routing, chunks = drain(router, "auto")
    assert routing.served_by == "strong" and routing.fallback_reason is None
    assert [t for c in chunks for t in c.token_ids][:3] == [5, 6, 7]
    assert breaker.state is BreakerState.CLOSED


def test_a_reserved_place_no_pass_used_gives_its_probe_back():
    cheap, strong = TokenModel([5, 6]), TokenModel([EOS])  # the strong tier's opening token ends the answer
    router = cascade_router(cheap, strong, mode="speculative", draft_tokens=2)
    breaker = router.fleet["cheap"].breaker
    for _ in range(5):
        breaker.enter().failed()
    router._clock.now += 60.0
    drain(router, "auto")
    assert cheap.requests == [] and settled(breaker)
    assert breaker.enter() is not None  # the next request probes the cheap tier


def test_a_probe_whose_caller_goes_away_is_given_back():
    router, clock = router_over(FakeTier(["Paris"], 0.9, delay_s=5.0), FakeTier(["Lyon"], 0.9),
                                first_token_timeout_s=60.0)
    breaker = half_open(router, clock, "cheap")

    async def go():
        task = asyncio.ensure_future(router.open("cheap", request()))
        await asyncio.sleep(1.0)
        assert breaker.probing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert settled(breaker) and breaker.state is BreakerState.HALF_OPEN


def test_a_probe_that_times_out_opens_the_circuit_again():
    router, clock = router_over(FakeTier(["Paris"], 0.9, delay_s=5.0), FakeTier(["Lyon"], 0.9),
                                fallbacks={"cheap": ["strong"]})
    breaker = half_open(router, clock, "cheap")
    routing, _ = drain(router, "cheap")
    assert routing.fallback_reason == "cheap: timeout" and breaker.state is BreakerState.OPEN


def test_a_probe_whose_request_raised_before_it_was_sent_is_given_back():
    def broken(request):
        raise RuntimeError("the handle could not be built")

    router, clock = router_over(broken, FakeTier(["Lyon"], 0.9))
    breaker = half_open(router, clock, "cheap")
    with pytest.raises(RuntimeError):
        drain(router, "cheap")
    assert settled(breaker)


def test_a_tier_with_no_running_replica_is_refused_as_starting_and_not_counted():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), fallbacks={"strong": ["cheap"]})
    router.fleet.starts("strong")
    clock.now += 30.0
    for _ in range(5):
        routing, _ = drain(router, "strong")
        assert routing.served_by == "cheap" and routing.fallback_reason == "strong: tier_starting"
    assert router.fleet["strong"].breaker.state is BreakerState.CLOSED
    assert router.fleet["strong"].breaker.failures == 0
    assert router.fleet.never_ran() == ["strong"]
    with pytest.raises(TierStarting) as caught:  # alone: its Retry-After is the replica's expected start, left
        run(router.fleet["strong"].open(request()))
    assert caught.value.retry_after_s == pytest.approx(60.0) and caught.value.status == 503
    router.fleet.resize("strong", 1)
    routing, _ = drain(router, "strong")
    assert routing.served_by == "strong" and routing.fallback_reason is None
    assert router.fleet.never_ran() == [] and router.fleet.starting() == {}


def test_every_tier_starting_is_a_503_with_the_soonest_retry_after():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), fallbacks={"strong": ["cheap"]})
    router.fleet.starts("strong")
    clock.now += 50.0
    router.fleet.starts("cheap")
    with pytest.raises(BackendUnavailable) as caught:
        drain(router, "strong")
    assert caught.value.status == 503 and "strong: tier_starting; cheap: tier_starting" in caught.value.message
    assert caught.value.retry_after_s == pytest.approx(40.0)


def test_a_new_replica_of_a_tier_with_an_open_circuit_is_probed_at_once():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), fallbacks={"strong": ["cheap"]})
    breaker = router.fleet["strong"].breaker
    for _ in range(2):
        breaker.enter().failed()
    router.fleet.resize("strong", 0)  # Ray Serve reports its replica gone
    routing, _ = drain(router, "strong")
    assert routing.fallback_reason == "strong: tier_starting"
    assert router.fleet.starting() and not router.fleet.never_ran()
    router.fleet.resize("strong", 1)  # its replacement runs: no cool-down to wait out
    routing, _ = drain(router, "strong")
    assert routing.served_by == "strong" and breaker.state is BreakerState.CLOSED


def test_the_admission_limit_is_restored_when_a_lost_tier_serves_again():
    router, _ = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), shed_s=1.0)
    load = router.fleet["strong"].load
    load.limit = 1.4  # cut by the requests that waited on the dead replica
    router.fleet.resize("strong", 0)
    router.fleet.resize("strong", 1)
    assert load.limit == load.ceiling


def test_a_backend_failure_does_not_cut_the_admission_limit():
    router, _ = router_over(FakeTier(["Paris"], 0.9, delay_s=5.0), FakeTier(["Lyon"], 0.9),
                            fallbacks={"cheap": ["strong"]}, shed_s=0.1)
    load = router.fleet["cheap"].load
    load.ttft.add(0.05)
    limit = load.limit
    drain(router, "cheap")  # its first token never came: the breaker counts it; the admission learns nothing
    assert router.fleet["cheap"].breaker.failures == 1 and load.limit == limit


def test_a_tier_that_scales_from_zero_takes_the_request_that_starts_its_replica():
    strong = FakeTier(["Lyon"], 0.9, delay_s=30.0)  # its first replica starts in 30 s
    router, clock = router_over(FakeTier(["Paris"], 0.9), strong, fallbacks={"strong": ["cheap"]},
                                strong_deployment={"max_ongoing_requests": 2, "num_replicas": None,
                                                   "autoscaling_config": {"min_replicas": 0, "max_replicas": 2}})
    router.fleet.resize("strong", 0)
    routing, _ = drain(router, "strong")  # longer than the 0.2 s first-token timeout, within the start
    assert routing.served_by == "strong" and len(strong.requests) == 1


def test_a_request_through_a_circuit_open_tier_says_so():
    router, clock = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9))
    for _ in range(2):
        router.fleet["strong"].breaker.enter().failed()
    with pytest.raises(CircuitOpen):
        run(router.fleet["strong"].open(request()))


def test_an_overloaded_refusal_is_not_a_fault():
    router, _ = router_over(FakeTier(["Paris"], 0.9, error=Overloaded("full")), FakeTier(["Lyon"], 0.9),
                            fallbacks={"cheap": ["strong"]})
    for _ in range(3):
        drain(router, "cheap")
    assert router.fleet["cheap"].breaker.state is BreakerState.CLOSED


def test_a_refused_auto_request_names_the_plan_the_tier_and_the_reason():
    router, _ = router_over(FakeTier(["Paris"], 0.9), FakeTier(["Lyon"], 0.9), shed_s=1.0)
    load = router.fleet["cheap"].load
    load.ttft.add(5.0)  # a newcomer would wait 5 s against a 1 s target
    load.started(max_tokens=10)
    with pytest.raises(Overloaded) as caught:
        drain(router, "auto")
    message = caught.value.message
    assert "(auto: overloaded)" in message, message
    assert "plan confidence (configured): tier 'cheap' is at capacity (expected wait 5.0 s)" in message, message
    assert caught.value.retry_after_s >= 1.0
