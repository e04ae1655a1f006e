"""Shipping a new version: canary split and stickiness, shadow copies, a failing canary rolled back,
a blue/green switch and the old version's retirement, all under `serve deploy` on the real stack.

A second application (`rollout`, on /rollout) serves one tier, `strong`, in two versions: v1 (the
strong model) and v2 (the pruned model, so the answers differ). The stack's own app is deployed
unchanged beside it (same args: not restarted) and alone again at the end, which deletes `rollout`.
Named to run after the other tests that want a quiet stack, before autoscaling and the faults.
"""

from __future__ import annotations

import copy
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from scripts.harness.cluster import BIN, DEPLOY_TIMEOUT_S, ROOT, get_json, wait_for, wait_until_running
from scripts.harness.metrics import scrape, total
from serve_app.routing.rollout import bucket
from tests.e2e.test_faults import kill_replica

pytestmark = [pytest.mark.e2e, pytest.mark.stage(1)]  # redeploys the app with versions

APP, PREFIX = "rollout", "/rollout"
V2_MODEL = "./models/smollm2-135m-instruct-pruned"
QUESTION = [{"role": "user", "content": "Name a large city in France."}]


def rollout_app(stack, retired_v1: bool = False) -> dict:
    """The stack's app config narrowed to the strong tier, with v2 beside v1 (or, retired, v2 alone)."""
    app = copy.deepcopy(stack.config["applications"][0])
    args = app["args"]
    strong = args["tiers"]["strong"]
    strong["deployment"]["ray_actor_options"] = {"num_cpus": 0.5}  # two more engines in the test cluster's 4 CPUs
    if retired_v1:
        strong.update(model={"source": V2_MODEL}, version="v2")
    else:
        strong["versions"] = {"v2": {"model": {"source": V2_MODEL}}}
    args["tiers"] = {"strong": strong}
    args["cascade"] = {"cheap_tier": "strong", "strong_tier": "strong"}
    args.pop("external")
    args["observability"] = {"tracing": {"exporter": "none"}}
    # Nothing may hide a failure here: no fallback chain, no cached answers.
    args["resilience"] = {**args["resilience"], "fallbacks": {}, "answer_cache_max_entries": 0}
    app.update(name=APP, route_prefix=PREFIX)
    return app


def deploy(stack, tmp_path, rollouts: dict | None, retired_v1: bool = False, wait: bool = True) -> float:
    """Check and `serve deploy` the stack's app plus, unless `rollouts` is None, the rollout app with
    that router user_config; returns when the controller had the config (`serve deploy` returned)."""
    config = copy.deepcopy(stack.config)
    if rollouts is not None:
        app = rollout_app(stack, retired_v1)
        # Two router replicas: a rollout decision must hold in both, and in a replica started later.
        app["deployments"] = [{"name": "router", "num_replicas": 2, "user_config": {"rollouts": rollouts}}]
        config["applications"].append(app)
    path = tmp_path / f"deploy-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([BIN / "python", "-m", "scripts.rollout", "check", str(path)], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([BIN / "serve", "deploy", str(path), "-a", stack.dashboard_url], cwd=ROOT, check=True, timeout=300)
    accepted = time.monotonic()
    if wait:
        wait_until_running(stack.dashboard_url)
        if rollouts is not None:
            wait_for("the rollout app", lambda: rollout_status(stack)["status"] == "RUNNING", DEPLOY_TIMEOUT_S, 3)
    return accepted


def rollout_status(stack) -> dict:
    return get_json(f"{stack.dashboard_url}/api/serve/applications/")["applications"].get(APP, {})


def rollouts_now(stack) -> dict:
    """`/v1/rollouts` from whichever router replica answers. It is rate-limited like every call with the
    key, so a 429 is waited out as its Retry-After says (a poll loop would otherwise trip it)."""
    url = f"{stack.http_url}{PREFIX}/v1/rollouts"
    while (response := httpx.get(url, headers=stack.headers, timeout=10)).status_code == 429:
        time.sleep(float(response.headers.get("retry-after", 1)))
    assert response.status_code == 200, response.text
    return response.json()


def from_replica(stack, replica: str) -> dict:
    """`/v1/rollouts` as router replica `replica` answers it (the proxy picks one: ask until it is that one)."""
    def answer():
        status = rollouts_now(stack)
        return status if status["replica"] == replica else None

    return wait_for(f"router replica {replica}'s rollouts", answer, 120, 0.2)


def every_router_replica(stack, check, seen: set[str] | None = None) -> set[str]:
    """Until both router replicas report what `check` wants of the strong tier's rollout; their ids."""
    seen = set() if seen is None else seen

    def both():
        status = rollouts_now(stack)
        if check(status["tiers"]["strong"]):
            seen.add(status["replica"])
        else:
            seen.discard(status["replica"])
        return len(seen) >= 2

    wait_for("both router replicas' rollout", both, 300, 0.2)
    return seen


def wait_applied(stack, check) -> dict:
    """Until every router replica reports the rollout `check` wants."""
    every_router_replica(stack, check)
    return rollouts_now(stack)["tiers"]["strong"]


def ask(http: httpx.Client, max_tokens: int = 2, session: str | None = None, **body) -> httpx.Response:
    headers = {"x-session-id": session} if session else {}
    return http.post("/chat/completions", headers=headers, json={
        "model": "strong", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0, **body})


@pytest.fixture(scope="module")
def versions(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    deploy(stack, tmp, {})
    with httpx.Client(base_url=f"{stack.http_url}{PREFIX}/v1", headers=stack.headers, timeout=300) as http:
        yield http, tmp
    deploy(stack, tmp, None, wait=False)  # the stack's app alone: `rollout` is deleted
    wait_for("the rollout app gone", lambda: not rollout_status(stack), 300, 2)


def past_slow_start(stack, http) -> None:
    """Until every router replica has served the stable version once. A router replica whose engines'
    warm-up figures did not reach it in time (busy cores) starts in slow start, one request at a time,
    and rightly refuses concurrent load until it has seen a first token."""
    seen: set[str] = set()

    def both() -> bool:
        ask(http)
        status = rollouts_now(stack)
        if status["tiers"]["strong"]["guard"]["stable"]["requests"] >= 1:
            seen.add(status["replica"])
        return len(seen) >= 2

    wait_for("every router replica past slow start", both, 300, 0.2)


def test_the_canary_takes_its_share_and_a_session_sticks_to_one_version(stack, versions):
    http, tmp = versions
    deploy(stack, tmp, {"strong": {"canary": "v2", "canary_percent": 50, "guard": {"min_requests": 1000}}})
    wait_applied(stack, lambda s: s["canary_percent"] == 50)
    past_slow_start(stack, http)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: ask(http), range(40)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    served = [r.headers["x-served-version"] for r in responses]
    assert set(served) <= {"v1", "v2"}
    assert 9 <= served.count("v2") <= 31  # 40 draws at p = 0.5: within 3.5 standard deviations

    sessions = [f"conversation-{i}" for i in range(6)]
    for session in sessions:
        seen = {ask(http, session=session).headers["x-served-version"] for _ in range(3)}
        assert seen == {"v2" if bucket("strong", session) < 50 else "v1"}, session
    # The OpenAI `user` field keys the split too, through the SDK as a client would send it.
    client = openai.OpenAI(base_url=f"{stack.http_url}{PREFIX}/v1", api_key=stack.api_key, max_retries=0)
    for user in ("alice", "bob"):
        raw = client.chat.completions.with_raw_response.create(model="strong", messages=QUESTION, max_tokens=2, user=user)
        assert raw.headers["x-served-version"] == ("v2" if bucket("strong", user) < 50 else "v1")


def test_a_shadow_copy_is_compared_and_never_reaches_the_client(stack, versions):
    http, tmp = versions
    deploy(stack, tmp, {"strong": {"shadow": "v2", "shadow_percent": 100}})
    wait_applied(stack, lambda s: s["shadow"] == "v2")
    answers = []
    for _ in range(4):
        response = ask(http, max_tokens=12)
        assert response.status_code == 200 and response.headers["x-served-version"] == "v1"
        answers.append(response.json()["choices"][0]["message"]["content"])
        time.sleep(1)  # the shadow has one engine to itself: copies are not shed for being busy
    assert len(set(answers)) == 1  # temperature 0: v1's answer every time
    # Each router replica mirrors the requests it routed: the four copies are split between the two.
    by_replica = {}

    def all_four():
        status = rollouts_now(stack)
        by_replica[status["replica"]] = status["tiers"]["strong"]["shadow_results"]
        return len(by_replica) == 2 and sum(r["ok"] + r["shed"] for r in by_replica.values()) == 4

    wait_for("the shadow results", all_four, 120, 0.2)
    results = {key: sum(r[key] for r in by_replica.values()) for key in ("ok", "shed", "error")}
    assert results["ok"] >= 1 and results["error"] == 0
    compared = [r for replica in by_replica.values() for r in replica["recent"] if r["outcome"] == "ok"]
    assert all(r["version"] == "v2" and 0 <= r["agreement"] <= 1 and r["output_tokens"] > 0 for r in compared)
    wait_for("shadow metrics", lambda: total(scrape(stack.metrics_url), "ray_serve_app_shadow_requests_total",
                                             application=APP, version="v2", outcome="ok") == results["ok"], 180, 2)


def test_a_failing_canary_is_rolled_back_and_a_failing_shadow_never_reaches_the_client(stack, versions, serve_handles):
    http, tmp = versions
    rollout = {"canary": "v2", "canary_percent": 50, "shadow": "v2", "shadow_percent": 100,
               "guard": {"min_requests": 3, "max_error_rate_increase": 0.2}}
    deploy(stack, tmp, {"strong": rollout})
    wait_applied(stack, lambda s: s["canary_percent"] == 50 and s["shadow_results"]["ok"] == 0)
    killed = kill_replica(serve_handles, f"{APP}#llm-strong-v2")
    responses = []
    while len(responses) < 30 and rollouts_now(stack)["tiers"]["strong"]["rolled_back"] is None:
        responses.append(ask(http))
    # One router replica's guard decided (when both did at once, the first verdict holds); the other
    # adopts it, and so does a restarted one.
    routers = every_router_replica(stack, lambda s: s["rolled_back"] is not None)
    # Counted once, by the replica whose verdict holds.
    counted = wait_for("the rollback counted", lambda: rollbacks_counted(stack), 180, 2)
    assert [value for _, value in counted] == [1.0], counted
    (decider,) = [labels["replica"] for labels, _ in counted]
    status = from_replica(stack, decider)["tiers"]["strong"]
    assert status["rolled_back"]["version"] == "v2" and "error rate" in status["rolled_back"]["reason"]
    assert status["canary_percent"] == 0 and status["configured_canary_percent"] == 50
    every_router_replica(stack, lambda s: s["rolled_back"] == status["rolled_back"])  # the one verdict, on both
    # A router restart: the replica that adopted the verdict is replaced; the new one starts rolled back.
    (adopter,) = routers - {decider}
    restart_router_replica(serve_handles, adopter)
    seen, deadline = set(), time.monotonic() + DEPLOY_TIMEOUT_S
    while not seen - routers:  # until the replica that replaced it answers too
        assert time.monotonic() < deadline, f"no new router replica answered; seen {seen}"
        now = rollouts_now(stack)
        assert now["tiers"]["strong"]["rolled_back"] == status["rolled_back"], now
        seen.add(now["replica"])
        time.sleep(0.2)
    responses += [ask(http) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert {r.headers["x-served-version"] for r in responses} == {"v1"}  # every canary failure answered by v1
    # Shadow results are each router replica's own: the decider's saw v2 fail (the replica that
    # replaced the adopter started after the failure, and may well have seen none). Ray Serve replaces
    # the killed v2 meanwhile, so later copies may succeed on its replacement: only failures are asserted.
    status = from_replica(stack, decider)["tiers"]["strong"]
    assert status["shadow_results"]["error"] + status["shadow_results"]["shed"] > 0
    # Ray Serve replaces the killed replica; the next tests want it serving.
    wait_for("v2 replaced", lambda: [r["actor_name"] for r in rollout_status(stack)["deployments"]["llm-strong-v2"]
                                     ["replicas"] if r["state"] == "RUNNING"] not in ([], [killed.actor]), DEPLOY_TIMEOUT_S, 3)


def rollbacks_counted(stack) -> list[tuple[dict, float]]:
    """The rollback counter's series for v2 of the rollout app's strong tier: (labels, value)."""
    wanted = {"application": APP, "tier": "strong", "version": "v2"}.items()
    return [(dict(tags), value) for (name, tags), value in scrape(stack.metrics_url).items()
            if name == "ray_serve_app_rollout_rollbacks_total" and wanted <= dict(tags).items()]


def restart_router_replica(serve_handles, replica_id: str) -> None:
    """Kill the rollout app's router replica `replica_id`; Ray Serve starts another in its place."""
    import ray

    (actor,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].endswith(f"{APP}#router#{replica_id}")]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)


class Traffic:
    """Requests sent back to back by `workers` threads until stopped: what each got and when."""

    def __init__(self, stack, workers: int = 2):
        self.results: list[tuple[float, float, int, str | None]] = []  # (sent, answered, status, version)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(stack,), daemon=True) for _ in range(workers)]

    def _run(self, stack) -> None:
        with httpx.Client(base_url=f"{stack.http_url}{PREFIX}/v1", headers=stack.headers, timeout=300) as http:
            while not self._stop.is_set() and len(self.results) < 2000:
                sent = time.monotonic()
                try:
                    response = ask(http, max_tokens=16)
                    self.results.append((sent, time.monotonic(), response.status_code,
                                         response.headers.get("x-served-version")))
                    if response.status_code != 200:
                        self.errors.append(response.text[:300])
                except httpx.HTTPError as exc:
                    self.results.append((sent, time.monotonic(), 0, type(exc).__name__))
                    self.errors.append(repr(exc))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def failures(self) -> list:
        return [r for r in self.results if r[2] != 200]

    def wait(self, what: str, check, timeout_s: float = 300) -> None:
        try:
            wait_for(what, check, timeout_s, 0.5)
        except TimeoutError:
            counts = Counter((status, version) for _, _, status, version in self.results)
            raise AssertionError(f"{what}: {dict(counts)}; first errors: {self.errors[:3]}") from None

    def served_by(self, version: str, after: float) -> int:
        return sum(1 for sent, _, status, v in self.results if sent >= after and v == version)


def test_blue_green_switch_and_retirement_drop_nothing(stack, versions):
    http, tmp = versions
    # Green (v2) gets copies of the traffic first: it answers (its circuit, open since the last test
    # killed it, closes) before it is trusted with the clients.
    deploy(stack, tmp, {"strong": {"shadow": "v2", "shadow_percent": 100}})
    wait_applied(stack, lambda s: s["stable"] == "v1" and s["canary"] is None and s["shadow"] == "v2")
    with Traffic(stack) as traffic:
        traffic.wait("traffic on v1, copied to v2", lambda: traffic.served_by("v1", 0) >= 4 and
                     rollouts_now(stack)["tiers"]["strong"]["shadow_results"]["ok"] >= 2)
        assert traffic.failures() == [], traffic.errors[:3]
        switch_started = time.monotonic()
        accepted = deploy(stack, tmp, {"strong": {"stable": "v2"}})
        traffic.wait("traffic on v2", lambda: traffic.served_by("v2", switch_started) >= 6)
    switched = [r for r in traffic.results if r[0] >= switch_started]
    first_all_v2 = min(sent for sent, _, _, v in switched if v == "v2" and
                       all(w == "v2" for s, _, _, w in switched if s >= sent))
    last_v1 = max(answered for _, answered, _, v in traffic.results if v == "v1")
    print(f"\nblue/green switch: {len(traffic.results)} requests, {len(switched)} sent after `serve deploy` started, "
          f"{len(traffic.failures())} failed; from the start of `serve deploy`: every request sent from "
          f"{first_all_v2 - switch_started:.1f} s on went to v2, the last v1 answer ended at "
          f"{last_v1 - switch_started:.1f} s, the command returned at {accepted - switch_started:.1f} s")
    assert traffic.failures() == [], traffic.errors[:3]
    assert all(v == "v2" for s, _, _, v in switched if s >= first_all_v2)

    # Retire v1: an args change, so Ray Serve replaces every replica of the app (new ones first:
    # max_surge_percent) and drains v1's before deleting it.
    with Traffic(stack) as traffic:
        traffic.wait("traffic", lambda: len(traffic.results) >= 4)
        accepted = deploy(stack, tmp, {"strong": {"stable": "v2"}}, retired_v1=True, wait=False)
        wait_for("v1 deleted", lambda: "llm-strong-v1" not in rollout_status(stack)["deployments"], 600, 1)
        retired = time.monotonic()
        wait_for("the app running", lambda: rollout_status(stack)["status"] == "RUNNING", DEPLOY_TIMEOUT_S, 1)
        replaced = time.monotonic()
        traffic.wait("requests after the retirement", lambda: traffic.served_by("v2", replaced) >= 4)
    print(f"retire v1: {len(traffic.results)} requests, {len(traffic.failures())} failed; after the controller had "
          f"the config: v1 deleted at {retired - accepted:.1f} s, router and v2 replaced at {replaced - accepted:.1f} s")
    assert traffic.failures() == [], traffic.errors[:3]
    assert {v for *_, v in traffic.results} == {"v2"}
