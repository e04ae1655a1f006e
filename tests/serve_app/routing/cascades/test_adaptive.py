"""The load-adaptive cascade: the pure plan over fake loads on a fake clock, and the `auto` route
following it (strong alone under load, one admission per speculative answer, the strong answer at
alpha 0 whatever it picks)."""

import asyncio

import pytest

from serve_app.config import AdaptiveCascade, AppConfig
from serve_app.core.errors import BackendTimeout, Overloaded
from serve_app.core.generation import GenerationRequest
from serve_app.routing.admission import TierLoad
from serve_app.routing.cascades.adaptive import Plan, TierState, plan
from serve_app.routing.factory import build_router
from tests.serve_app.fakes import EOS, Clock, FakeTier, TokenModel, run

SETTINGS = AdaptiveCascade(speculate_below=0.125, strong_alone_at=0.25)
IDLE = TierState(in_flight=0, batch=32, expected_wait_s=0.5, ttft_s=0.5)


def state(in_flight, batch=32, wait_s=0.5, ttft_s=0.5):
    return TierState(in_flight, batch, wait_s, ttft_s)


def test_an_idle_strong_tier_gets_full_drafts():
    assert plan(SETTINGS, 8, IDLE, IDLE, 10.0) == Plan("speculative", 8, "strong tier 0/32 busy")
    assert plan(SETTINGS, 8, state(3), IDLE, 10.0).draft_tokens == 8  # 3/32 < 1/8


@pytest.mark.parametrize(("in_flight", "drafts"), [(4, 8), (5, 6), (6, 4), (7, 2), (7.9, 1)])
def test_drafts_shrink_linearly_as_the_strong_batch_fills(in_flight, drafts):
    chosen = plan(SETTINGS, 8, state(in_flight), IDLE, 10.0)
    assert (chosen.mode, chosen.draft_tokens) == ("speculative", drafts)


def test_from_strong_alone_at_on_the_strong_tier_answers_alone():
    chosen = plan(SETTINGS, 8, state(8), IDLE, 10.0)
    assert (chosen.mode, chosen.draft_tokens, chosen.label) == ("strong", 0, "strong")
    assert plan(SETTINGS, 8, state(40), IDLE, 10.0).mode == "strong"


def test_a_queue_forming_on_the_strong_tier_stops_drafting_whatever_the_batch_share():
    assert plan(SETTINGS, 8, state(1, wait_s=6.0), IDLE, 10.0).mode == "strong"  # 5.5 s of queueing
    assert plan(SETTINGS, 8, state(1, wait_s=6.0), IDLE, None).mode == "speculative"  # shedding off: no target
    # A slow first token without a queue (a long prompt's prefill, a slow warm-up figure) is not load.
    assert plan(SETTINGS, 8, state(0, wait_s=6.0, ttft_s=6.0), IDLE, 10.0).mode == "speculative"


def test_a_full_cheap_batch_leaves_the_answer_to_the_strong_tier():
    chosen = plan(SETTINGS, 8, IDLE, state(32), 10.0)
    assert chosen.mode == "strong" and "cheap tier 32/32" in chosen.reason


def test_the_confidence_cascade_only_where_the_operator_allows_it_and_only_on_a_full_strong_batch():
    allowed = SETTINGS.model_copy(update={"confidence_when_full": True})
    assert plan(SETTINGS, 8, state(32), IDLE, 10.0).mode == "strong"
    assert plan(allowed, 8, state(16), IDLE, 10.0).mode == "strong"  # busy, but not full
    assert plan(allowed, 8, state(32), IDLE, 10.0).label == "confidence"


def test_the_plan_follows_the_load_as_requests_come_and_go():
    """Arrivals on a virtual clock onto a real TierLoad: full drafts, shorter, strong alone; and back."""
    clock = Clock()
    strong, cheap = TierLoad(32, 10.0, clock, ceiling=96), TierLoad(32, 10.0, clock, ceiling=96)
    strong.seed(0.5, 0.1)
    cheap.seed(0.2, 0.05)

    def now():
        return plan(SETTINGS, 8, TierState(strong.in_flight, strong.batch, strong.estimate_wait_s(), strong.ttft.value),
                    TierState(cheap.in_flight, cheap.batch, cheap.estimate_wait_s(), cheap.ttft.value), 10.0).label

    labels, tickets = [], []
    for _ in range(10):
        labels.append(now())
        tickets.append(strong.started(32))
        clock.now += 0.1
    assert labels == ["speculative-8"] * 5 + ["speculative-6", "speculative-4", "speculative-2", "strong", "strong"]
    for ticket in tickets:
        strong.finished(ticket, completed=True)
    assert now() == "speculative-8"


def router(cheap, strong, batch=8, slots=8, first_token_timeout_s=5.0, shed_s=10.0, **cascade):
    tier = {"model": {"source": "/models/x"}, "deployment": {"max_ongoing_requests": batch},
            "limits": {"concurrency_slots": slots, "first_token_timeout_s": first_token_timeout_s}}
    config = AppConfig.model_validate({"tiers": {"cheap": tier, "strong": tier},
                                       "cascade": {"mode": "speculative", "draft_tokens": 4, **cascade},
                                       "resilience": {"retry_attempts": 1, "shed_ttft_target_s": shed_s}})
    built = build_router({"cheap": cheap, "strong": strong}, config, Clock())
    for tier_name in ("cheap", "strong"):
        built.fleet.seed_speed(tier_name, 0.1, 0.01)
    return built


STRONG = [5, 6, 7, 8, 9, EOS]


def answer(r, request_id="r"):
    async def go():
        stream = await r.open("auto", GenerationRequest(request_id, {"temperature": 0}, prompt="q"))
        return stream, [chunk async for chunk in stream.chunks]

    return run(go())


def busy(r, tier, n):
    return [r.fleet[tier].load.started(16) for _ in range(n)]


def test_under_load_auto_sends_the_request_to_the_strong_tier_alone_and_says_so():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    r = router(cheap, strong)
    busy(r, "strong", 2)  # 2 of a batch of 8: at strong_alone_at
    stream, chunks = answer(r)
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert (stream.routing.served_by, stream.routing.plan, stream.routing.reason) == ("strong", "strong", "strong alone")
    assert "strong tier 2/8 busy" in stream.routing.plan_reason
    assert cheap.requests == [] and len(strong.requests) == 1


@pytest.mark.parametrize("strong_busy", [0, 1, 2])
@pytest.mark.parametrize("drafts", [1, 2, 4, 8])
def test_at_alpha_zero_every_plan_serves_the_strong_tiers_answer(strong_busy, drafts):
    cheap, strong = TokenModel([5, 6, 1, 8, 2, 3, EOS]), TokenModel(STRONG)
    r = router(cheap, strong, draft_tokens=drafts, alpha=0.0)
    busy(r, "strong", strong_busy)
    stream, chunks = answer(r)
    assert [t for c in chunks for t in c.token_ids] == STRONG
    assert stream.routing.plan.startswith("speculative") or stream.routing.plan == "strong"


def test_switched_off_auto_runs_the_configured_mode_whatever_the_load():
    r = router(TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG), adaptive={"enabled": False})
    busy(r, "strong", 6)
    stream, _ = answer(r)
    assert (stream.routing.plan, stream.routing.plan_reason, stream.routing.reason) == (
        "speculative-4", "configured", "speculative")


def test_a_speculative_answer_is_admitted_once_and_its_passes_are_never_shed():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    r = router(cheap, strong, batch=8, slots=2, adaptive={"enabled": False})

    async def go():
        stream = await r.open("auto", GenerationRequest("r", {"temperature": 0}, prompt="q"))
        assert r.fleet["strong"].load.in_flight == 1 and r.fleet["cheap"].load.in_flight == 1  # one ticket each
        fillers = busy(r, "strong", 3) + busy(r, "cheap", 3)  # both tiers now past their limit of 2
        assert not r.fleet["strong"].load.admit().admitted
        chunks = [chunk async for chunk in stream.chunks]
        return stream, chunks, fillers

    stream, chunks, fillers = run(go())
    assert [t for c in chunks for t in c.token_ids] == STRONG and chunks[-1].speculation["passes"] == 2
    assert all(a.error is None for a in stream.ledger.attempts)
    # The answer's places are given back with its last chunk; the others' stay.
    assert r.fleet["strong"].load.in_flight == 3 and r.fleet["cheap"].load.in_flight == 3
    assert all(r.fleet["strong"].load.holds(f) for f in fillers[:3])


def test_a_refusal_on_the_strong_tier_comes_before_any_work():
    cheap, strong = TokenModel(STRONG), TokenModel(STRONG)
    r = router(cheap, strong, slots=2, adaptive={"enabled": False})
    busy(r, "strong", 2)
    with pytest.raises(Overloaded) as caught:
        answer(r)
    assert caught.value.status == 503 and caught.value.retry_after_s >= 1
    assert cheap.requests == [] and strong.requests == []
    assert r.fleet["cheap"].load.in_flight == 0 and r.fleet["strong"].load.in_flight == 2


def test_a_refusal_on_the_cheap_tier_leaves_the_answer_to_the_strong_tier():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    r = router(cheap, strong, slots=2, adaptive={"enabled": False})
    busy(r, "cheap", 2)
    stream, chunks = answer(r)
    assert [t for c in chunks for t in c.token_ids] == STRONG and cheap.requests == []
    assert stream.routing.served_by == "strong" and stream.routing.fallback_reason == "cheap: overloaded"
    assert r.fleet["strong"].load.in_flight == 0


def test_a_reserved_pass_waits_out_a_queue_that_the_first_token_timeout_would_cut():
    slow = FakeTier(["Lyon", "!"], 0.9, delay_s=1.0)  # behind a queue: 1 s to its first token
    r = router(FakeTier(["Paris"], 0.9), slow, first_token_timeout_s=0.2)
    backend = r.tiers.backend("strong", "k")
    request = GenerationRequest("r", {"max_tokens": 2}, prompt="q")

    async def go(ticket):
        chunks = await backend.open(request, ticket=ticket)
        return [c.text async for c in chunks]

    with pytest.raises(BackendTimeout):
        run(go(None))  # an admitted request with room in the batch: a fault of the tier
    failures = backend.breaker.failures
    ticket = backend.reserve(request)
    assert run(go(ticket)) == ["Lyon", "!"]
    assert backend.load.holds(ticket)  # the answer, not the pass, ends the reservation
    backend.release(ticket, completed=True)
    assert backend.load.in_flight == 0 and backend.breaker.failures == failures


def test_an_answer_cancelled_mid_stream_gives_its_places_back():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG, hang_after=0)
    r = router(cheap, strong, adaptive={"enabled": False})

    async def go():
        task = asyncio.ensure_future(r.open("auto", GenerationRequest("r", {}, prompt="q")))
        await asyncio.sleep(0.05)
        assert r.fleet["strong"].load.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert r.fleet["strong"].load.in_flight == 0 and r.fleet["cheap"].load.in_flight == 0


def test_an_answer_stops_drafting_when_the_strong_tier_gets_busy_mid_answer():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    r = router(cheap, strong, draft_tokens=2)

    async def go():
        stream = await r.open("auto", GenerationRequest("r", {"temperature": 0}, prompt="q"))
        chunks = [await anext(stream.chunks), await anext(stream.chunks)]  # the opening token, one round
        others = busy(r, "strong", 2)  # with the answer's own place, 3 of 8: past strong_alone_at
        chunks += [chunk async for chunk in stream.chunks]
        return stream, chunks, others

    stream, chunks, _ = run(go())
    assert [t for c in chunks for t in c.token_ids] == STRONG  # still the strong tier's answer
    assert stream.routing.plan == "speculative-2" and chunks[-1].speculation["drafting_stopped"] == 1
    assert chunks[-1].speculation["passes"] == 1 and len(cheap.requests) == 1
    tally = chunks[-1].speculation
    assert tally["accepted"] + tally["replaced"] + tally["added"] == len(STRONG)  # every served token counted
    assert r.fleet["strong"].load.in_flight == 2 and r.fleet["cheap"].load.in_flight == 0


def test_an_answer_keeps_drafting_while_the_load_it_sees_is_its_own():
    cheap, strong = TokenModel([5, 6, 1, 8, 9, EOS]), TokenModel(STRONG)
    stream, chunks = answer(router(cheap, strong, draft_tokens=2))
    assert chunks[-1].speculation["drafting_stopped"] == 0 and chunks[-1].speculation["passes"] == 2
