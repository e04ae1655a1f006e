"""Versions and rollouts: the pure policies (split, stickiness, guard, agreement), the config rules,
and the router over fake versions (a failing canary, shadow copies)."""

import asyncio
import random

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, RolloutConfig, TierRollout
from serve_app.core.errors import BackendUnavailable
from serve_app.routing.factory import build_router
from serve_app.routing.rollout import Choice, RollbackBook, RolledBack, TierTraffic, agreement, bucket, rollout_identity
from tests.serve_app.fakes import FakeTier, request, run


def traffic(seed=0, **rollout):
    return TierTraffic("strong", "v1", TierRollout(**rollout), random.Random(seed), lambda: 0.0)


def test_buckets_are_stable_and_spread_evenly():
    assert bucket("strong", "user-1") == bucket("strong", "user-1")
    places = [bucket("strong", f"user-{i}") for i in range(4000)]
    assert all(0 <= p < 100 for p in places)
    assert 0.23 < sum(p < 25 for p in places) / len(places) < 0.27


def test_a_keyed_request_sticks_to_its_version_and_raising_the_share_only_adds_canary_keys():
    keys = [f"session-{i}" for i in range(300)]
    at_10 = {k for k in keys if traffic(canary="v2", canary_percent=10).pick(k).canary}
    at_30 = {k for k in keys if traffic(canary="v2", canary_percent=30).pick(k).canary}
    assert at_10 < at_30
    assert at_10 == {k for k in keys if bucket("strong", k) < 10}
    t = traffic(seed=1, canary="v2", canary_percent=50)
    assert len({t.pick("session-7").version for _ in range(20)}) == 1


def test_unkeyed_requests_split_at_random_in_proportion():
    t = traffic(seed=3, canary="v2", canary_percent=20)
    share = sum(t.pick(None).canary for _ in range(5000)) / 5000
    assert 0.18 < share < 0.22
    assert {t.pick(None).version for _ in range(100)} == {"v1", "v2"}


def test_the_guard_rolls_back_a_canary_that_fails_more_than_stable():
    t = traffic(canary="v2", canary_percent=50, guard={"min_requests": 4, "max_error_rate_increase": 0.2})
    for _ in range(10):
        assert t.record(Choice("v1", False), True, 0.1) is None
    for ok in (True, False, True):
        assert t.record(Choice("v2", True), ok, 0.1) is None  # 3 canary requests: too few to judge
    rollback = t.record(Choice("v2", True), False, None)
    assert rollback.version == "v2" and "error rate 50%" in rollback.reason
    assert t.canary_percent == 0 and t.pick(None) == Choice("v1", False)
    assert t.record(Choice("v2", True), False, None) is None  # reported once


def test_the_guard_judges_recent_requests_only():
    t = traffic(canary="v2", canary_percent=50, guard={"min_requests": 4, "window": 4, "max_error_rate_increase": 0.2})
    for _ in range(10):
        t.record(Choice("v1", False), True, 0.1)
        assert t.record(Choice("v2", True), True, 0.1) is None
    assert t.status()["guard"]["canary"]["requests"] == 4
    rollback = t.record(Choice("v2", True), False, None)  # 1 failure in the last 4 (1 in 11 over all of them)
    assert "error rate 25%" in rollback.reason


def test_the_guard_rolls_back_a_slow_canary_but_not_a_comparable_one():
    t = traffic(canary="v2", canary_percent=50, guard={"min_requests": 3, "max_ttft_ratio": 2.0})
    for _ in range(3):
        t.record(Choice("v1", False), True, 0.10)
        assert t.record(Choice("v2", True), True, 0.15) is None
    rollbacks = [t.record(Choice("v2", True), True, 0.50) for _ in range(3)]
    # medians 0.15, 0.15, then 0.325 s: more than twice the stable 0.10 s
    assert rollbacks[:2] == [None, None] and "median TTFT 0.33 s" in rollbacks[2].reason


def test_shadow_copies_follow_the_share():
    t = traffic(seed=5, shadow="v2", shadow_percent=50, shadow_max_in_flight=1)
    picks = [t.wants_copy() for _ in range(2000)]
    assert 0.45 < picks.count("v2") / 2000 < 0.55


def test_agreement_of_answers():
    assert agreement("The capital is Paris.", "the capital is Paris.") == 1.0
    assert agreement("Paris", "Lyon") == 0.0
    assert 0.5 < agreement("The capital of France is Paris", "The capital of France is Lyon") < 1.0


TIER = {"model": {"source": "/models/a"}, "limits": {"concurrency_slots": 2, "dispatch_timeout_s": None},
        "engine": {"args": {"dtype": "float32", "max_model_len": 2048}}}


def app(versions=None, **strong):
    return AppConfig.model_validate({"tiers": {"cheap": TIER, "strong": {**TIER, **strong, "versions": versions or {}}}})


def test_a_version_is_the_tier_with_its_sections_merged_key_by_key():
    strong = app({"v2": {"model": {"source": "/models/b"}, "engine": {"args": {"max_model_len": 1024}},
                         "limits": {"concurrency_slots": 1}}}).tiers["strong"]
    versions = strong.all_versions()
    assert list(versions) == ["v1", "v2"] and strong.default_version == "v1"
    assert versions["v2"].model.source == "/models/b"
    assert versions["v2"].engine.args == {"dtype": "float32", "max_model_len": 1024}
    assert versions["v2"].limits.concurrency_slots == 1 and versions["v2"].limits.dispatch_timeout_s is None
    assert versions["v1"].engine.args == TIER["engine"]["args"] and versions["v1"].limits.concurrency_slots == 2
    labels = {(e.tier, e.version): (e.label, e.deployment) for e in app({"v2": {"model": {"source": "/b"}}}).engine_versions()}
    assert labels[("cheap", "v1")] == ("cheap", "llm-cheap-v1")
    assert labels[("strong", "v2")] == ("strong@v2", "llm-strong-v2")


def test_a_tier_may_list_only_versions_and_then_the_first_is_its_default():
    strong = app({"green": {"model": {"source": "/g"}}, "blue": {"model": {"source": "/b"}}}, model=None).tiers["strong"]
    assert list(strong.all_versions()) == ["green", "blue"] and strong.default_version == "green"


@pytest.mark.parametrize("versions, strong, message", [
    ({"v1": {"model": {"source": "/b"}}}, {}, "already the tier's own version"),
    ({"v2": {"engine": {"args": {"model": "x"}}}}, {}, "versions.v2"),
    ({"v2": {"nonsense": 1}}, {}, "versions.v2"),
    ({"V 2": {"model": {"source": "/b"}}}, {}, "versions.V 2"),
    ({}, {"model": None}, "model is required"),
])
def test_bad_versions_are_refused_by_name(versions, strong, message):
    with pytest.raises(ValidationError, match=message):
        app(versions, **strong)


@pytest.mark.parametrize("rollouts, message", [
    ({"huge": {}}, "'huge' is not one of the tiers"),
    ({"strong": {"canary": "v9", "canary_percent": 5}}, "rollouts.strong.canary: 'v9'"),
    ({"strong": {"canary_percent": 5}}, "no canary version"),
    ({"strong": {"canary": "v1", "canary_percent": 5}}, "is the stable version"),
    ({"strong": {"stable": "v2", "shadow": "v2", "shadow_percent": 5}}, "shadow must differ"),
])
def test_rollouts_naming_missing_versions_or_one_version_twice_are_refused(rollouts, message):
    with pytest.raises(ValueError, match=message):
        RolloutConfig.model_validate({"rollouts": rollouts}).check(app({"v2": {"model": {"source": "/b"}}}))


def versioned_router(rollout: dict, v2_error=None, seed=0):
    config = app({"v2": {"model": {"source": "/models/b"}}})
    v1 = FakeTier(["Paris", " is", " big"], 0.9)
    v2 = FakeTier(["Paris", " is", " small"], 0.9, v2_error)
    events = {"rollbacks": [], "shadows": []}
    router = build_router({"cheap": FakeTier(["x"], 0.9), "strong@v1": v1, "strong@v2": v2}, config, lambda: 0.0,
                           random.Random(seed), on_rollback=lambda tier, r: events["rollbacks"].append((tier, r)),
                           on_shadow=lambda tier, r: events["shadows"].append((tier, r)))
    router.tiers.apply(RolloutConfig.model_validate({"rollouts": {"strong": rollout}}).check(config))
    return router, v1, v2, events


async def ask(router, n, model="strong", key=None):
    served = []
    for i in range(n):
        req = request()
        req.session_key = key(i) if key else None
        stream = await router.open(model, req)
        text = "".join([c.text async for c in stream.chunks])
        served.append((stream.routing.version, text))
    await router.tiers.shadows_done()
    return served


def test_a_failing_canary_never_fails_a_request_and_is_rolled_back():
    router, v1, v2, events = versioned_router(
        {"canary": "v2", "canary_percent": 50, "guard": {"min_requests": 3}}, v2_error=BackendUnavailable("down"))
    served = run(ask(router, 30))
    assert all(version == "v1" and text == "Paris is big" for version, text in served)
    assert len(v2.requests) == 3 and len(events["rollbacks"]) == 1  # three failures, then 0 %
    assert router.tiers.status()["strong"]["rolled_back"]["version"] == "v2"


def test_the_cascade_uses_the_strong_tiers_rollout_too():
    router, v1, v2, _ = versioned_router({"stable": "v2"})
    stream = run(router.open("strong", request()))
    assert stream.routing.version == "v2"


def test_a_shadow_copy_is_compared_but_never_returned():
    router, v1, v2, events = versioned_router({"shadow": "v2", "shadow_percent": 100})
    served = run(ask(router, 4))
    assert served == [("v1", "Paris is big")] * 4
    assert len(v2.requests) == 4 and all(r.request_id.endswith("-shadow") for r in v2.requests)
    records = [r for _, r in events["shadows"]]
    assert [r.outcome for r in records] == ["ok"] * 4
    assert all(r.agreement == pytest.approx(2 / 3, abs=1e-3) and r.exact is False for r in records)
    assert router.tiers.status()["strong"]["shadow_results"]["ok"] == 4


def test_copies_past_the_bound_are_shed_and_reported_like_every_other_shadow_outcome():
    router, v1, v2, events = versioned_router({"shadow": "v2", "shadow_percent": 100, "shadow_max_in_flight": 1})
    v2.delay_s = 0.2  # the first copy is still running when the others come (on the virtual clock)

    async def three_at_once():
        served = await asyncio.gather(*(ask(router, 1) for _ in range(3)))
        await router.tiers.shadows_done()  # the one copy sent finishes
        return served

    assert run(three_at_once()) == [[("v1", "Paris is big")]] * 3
    outcomes = sorted(r.outcome for _, r in events["shadows"])
    assert outcomes == ["ok", "shed", "shed"] and len(v2.requests) == 1
    assert router.tiers.status()["strong"]["shadow_results"]["shed"] == 2  # the log and the deployment agree
    assert router.tiers.status()["strong"]["shadow_in_flight"] == 0


def test_a_failing_shadow_is_recorded_and_the_client_still_gets_the_primary_answer():
    router, v1, v2, events = versioned_router({"shadow": "v2", "shadow_percent": 100}, v2_error=BackendUnavailable("x"))
    assert run(ask(router, 3)) == [("v1", "Paris is big")] * 3
    assert [r.outcome for _, r in events["shadows"]] == ["error"] * 3


def test_an_unchanged_rollout_keeps_its_rollback_and_a_changed_one_starts_afresh():
    router, _, _, _ = versioned_router({"canary": "v2", "canary_percent": 50, "guard": {"min_requests": 1}},
                                       v2_error=BackendUnavailable("down"))
    run(ask(router, 10))
    same = RolloutConfig.model_validate({"rollouts": {"strong": {"canary": "v2", "canary_percent": 50,
                                                                 "guard": {"min_requests": 1}}}})
    router.tiers.apply(same)
    assert router.tiers.status()["strong"]["rolled_back"] is not None
    router.tiers.apply(RolloutConfig.model_validate({"rollouts": {"strong": {"canary": "v2", "canary_percent": 10}}}))
    assert router.tiers.status()["strong"]["rolled_back"] is None
    assert router.tiers.status()["strong"]["guard"]["canary"]["requests"] == 0


def test_a_rollout_identity_changes_with_the_rollout_and_only_with_it():
    a = TierRollout(canary="v2", canary_percent=10)
    assert rollout_identity(a) == rollout_identity(TierRollout(canary="v2", canary_percent=10.0))
    assert rollout_identity(a) != rollout_identity(TierRollout(canary="v2", canary_percent=20))
    assert rollout_identity(a) != rollout_identity(TierRollout())


def test_a_replica_adopts_the_rollback_the_shared_book_holds_for_its_own_canary():
    traffic = TierTraffic("strong", "v1", TierRollout(canary="v2", canary_percent=50, guard={"min_requests": 1}),
                          random.Random(0), lambda: 5.0)
    assert not traffic.adopt(RolledBack("v3", "not this canary", 1.0))
    held = RolledBack("v2", "error rate 100%", 1.0)
    assert traffic.adopt(held)
    assert traffic.canary_percent == 0 and traffic.pick("anyone").version == "v1"
    assert not traffic.adopt(held)  # the same verdict again changes nothing

    # Both replicas' guards decided at once: this one's own verdict yields to the one the book kept.
    both = TierTraffic("strong", "v1", TierRollout(canary="v2", canary_percent=50, guard={"min_requests": 1}),
                       random.Random(0), lambda: 5.0)
    mine = both.record(Choice("v2", True), False, None)
    assert mine is not None and mine != held
    assert both.adopt(held) and both.rolled_back == held and both.canary_percent == 0


def test_the_rollback_book_keeps_the_first_rollback_of_the_current_rollout():
    book = RollbackBook()
    assert book.apply("strong", "A") is None
    first, second = {"version": "v2", "reason": "first", "at_s": 1.0}, {"version": "v2", "reason": "second", "at_s": 2.0}
    assert book.record("strong", "A", first) == first
    assert book.record("strong", "A", second) == first       # another replica's later verdict: the first holds
    assert book.apply("strong", "A") == first                # a restarted replica with the same rollout
    assert book.record("strong", "old", second) is None      # a stale rollout's verdict is dropped
    assert book.apply("strong", "B") is None                 # a new rollout starts clean...
    assert book.apply("strong", "A") is None                 # ...and so does the old one re-applied after it
    assert book.rollbacks() == {"strong": ("A", None)}


def test_the_router_says_whether_a_canary_runs():
    router, _, _, _ = versioned_router({"shadow": "v2", "shadow_percent": 10})
    assert not router.tiers.runs_canary()
    router.tiers.apply(RolloutConfig.model_validate({"rollouts": {"strong": {"canary": "v2", "canary_percent": 5}}}))
    assert router.tiers.runs_canary()
