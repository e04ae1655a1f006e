"""One real stack per test run: a fresh Ray head on 127.0.0.1, and `serve deploy` of the local CPU
profile (both vLLM engines, the router) as CI would deploy it. Torn down when the session ends, or before
the first module that starts a cluster of its own (OWN_CLUSTER_STAGE), even when tests fail, the hard way,
as `ray stop --force` on a node does: every Ray process is killed and the engines must end by themselves;
one that outlives the cluster fails the run (and is then reaped)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scripts.harness.cluster import (
    BIN,
    DEPLOY_TIMEOUT_S,
    ROOT,
    RayHead,
    app_args,
    free_port,
    get_json,
    load_profile,
    wait_for,
    wait_until_running,
)
from scripts.harness.processes import stop_process_tree
from scripts.harness.spans import SpanCollector
from serve_app.config import overlaid

RUN_MARKER = ("SERVE_APP_TEST_RUN", uuid.uuid4().hex)
"""In the environment of every process the test cluster starts, so teardown can tell its processes."""
API_KEYS = ("sk-test-main", "sk-test-rate")
"""Given to the cluster's processes as SERVE_APP_API_KEYS, as an operator would: authentication is on."""


@dataclass(frozen=True)
class ExternalApi:
    base_url: str
    model: str


def start_external_api(log_dir: Path) -> tuple[subprocess.Popen, ExternalApi]:
    """vLLM's own OpenAI server on the strong model: the real provider behind the `backup` fallback."""
    port, name = free_port(), "smollm2-135m-instruct"
    log = open(log_dir / "external-api.log", "w")
    process = subprocess.Popen(
        [BIN / "python", "-m", "vllm.entrypoints.openai.api_server", "--model", ROOT / "models" / name,
         "--served-model-name", name, "--host", "127.0.0.1", f"--port={port}", "--dtype=float32",
         "--enforce-eager", "--max-model-len=2048",
         # tools as the app's tiers serve them (configs/local-cpu.yaml): the same template, parser, strictness
         "--chat-template=configs/templates/smollm2-tools.jinja", "--enable-auto-tool-choice",
         "--tool-call-parser=hermes", "--tool-strict-level=parameter"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
             RUN_MARKER[0]: RUN_MARKER[1]},
    )
    return process, ExternalApi(f"http://127.0.0.1:{port}/v1", name)


def start_prometheus(metrics_url: str, work_dir: Path) -> tuple[subprocess.Popen, str] | tuple[None, None]:
    """Prometheus scraping Ray's endpoint every 2 s and evaluating the shipped alert rules every 2 s."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None, None
    target = metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
              "rule_files": [str(ROOT / "configs" / "prometheus" / "alerts.yml")],
              "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}]}
    (work_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={work_dir / 'prometheus.yml'}", f"--storage.tsdb.path={work_dir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=work_dir, stdout=open(work_dir / "prometheus.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200, timeout_s=120)
    except BaseException:
        stop_process_tree(process)
        raise
    return process, url


@dataclass(frozen=True)
class Stack:
    base_url: str
    """The OpenAI API root, e.g. http://127.0.0.1:PORT/v1."""
    http_url: str
    dashboard_url: str
    gcs_address: str
    config: dict
    external: ExternalApi
    metrics_url: str
    """Ray's Prometheus endpoint on the head node."""
    spans: SpanCollector
    """Every span the stack's processes exported (the profile's tracing, pointed at this collector)."""
    model_cache_dir: Path
    """The node's model cache, where the cheap tier's weights land from S3."""
    prometheus_url: str | None = None
    """A real Prometheus scraping `metrics_url` since the stack started, with configs/prometheus/alerts.yml
    loaded (None where the prometheus binary is not installed)."""
    api_key: str = API_KEYS[0]

    @property
    def args(self) -> dict:
        """The deployed application's args (`config` is the whole Serve config)."""
        return app_args(self.config)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def error_of(response) -> dict:
    """The OpenAI error envelope of an httpx response, checked for its four fields."""
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


OWN_CLUSTER_STAGE = 6
"""The stage of the modules that start a cluster of their own: they run last, after the shared stack is
stopped (`SHARED.run_all`), so that two clusters' engines never share the machine's memory and cores (the
stack holds four by then: the tiers, the strong one scaled to two, and the external API's)."""


def stage(item) -> int:
    marker = item.get_closest_marker("stage")
    return marker.args[0] if marker else 0


def pytest_collection_modifyitems(items):
    """The modules that change, read all of, or break the shared stack (`stage(n)`) run after every test
    that only uses it, in stage order; file names do not matter, and any module runs alone with -k."""
    items.sort(key=stage)


class Teardowns:
    """The shared stack's teardowns (the stack, the driver connected to it), each run once, the latest
    first: when the session ends, or earlier by `run_all`."""

    def __init__(self):
        self._pending: list = []

    @contextlib.contextmanager
    def held(self, teardown):
        """Runs `teardown` when the block ends, unless `run_all` ran it before."""
        self._pending.append(teardown)
        try:
            yield
        finally:
            if teardown in self._pending:
                self._pending.remove(teardown)
                teardown()

    def run_all(self) -> None:
        while self._pending:
            self._pending.pop()()


SHARED = Teardowns()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the first module of its own cluster sets up, the stack is torn down (its last user is done:
    the stages order them); such a module may not use it."""
    if stage(item) >= OWN_CLUSTER_STAGE:
        if {"stack", "serve_handles", "client"} & set(item.fixturenames):
            raise pytest.UsageError(f"{item.nodeid} starts a cluster of its own and may not use the shared stack")
        SHARED.run_all()


CHEAP_S3_URI = "s3://models/smollm2-135m-instruct-pruned/v1"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_env():
    """A real S3 endpoint over HTTP on 127.0.0.1 (moto's server) holding the cheap model, uploaded with
    the project's own tool; yields the environment that points boto3 at it."""
    server, env = start_model_store()
    try:
        yield env
    finally:
        server.stop()


def start_model_store() -> tuple[object, dict[str, str]]:
    from moto.server import ThreadedMotoServer

    from serve_app.models.store import upload

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    os.environ.update(env)  # this process uploads; the cluster's processes get `env` explicitly
    import boto3

    boto3.client("s3").create_bucket(Bucket="models")
    upload(ROOT / "models" / "smollm2-135m-instruct-pruned", CHEAP_S3_URI)
    return server, env


@pytest.fixture(scope="session")
def stack(tmp_path_factory, s3_env) -> Stack:
    http_port = free_port()
    log_dir = tmp_path_factory.mktemp("logs")
    spans = SpanCollector()
    model_cache_dir = tmp_path_factory.mktemp("model-cache")
    external_process, external = start_external_api(log_dir)
    head = prometheus = None

    def teardown():
        try:
            if prometheus is not None:
                stop_process_tree(prometheus)
            stop_process_tree(external_process)  # its own process group
            if head is not None:
                head.kill()  # as `ray stop --force`: fails the run if an engine outlives the cluster
        finally:
            spans.close()

    try:
        head = RayHead.start(log_dir / "ray-start.log", RUN_MARKER, env={
            "SERVE_APP_API_KEYS": ",".join(API_KEYS), **s3_env, "SERVE_APP_MODEL_CACHE_DIR": str(model_cache_dir),
            "RAY_metrics_report_interval_ms": "2000"})  # metrics reach the endpoint within 2 s, not 10
        # The profile as shipped, on ports of the test's own, with the evaluation overlay: the tests compare
        # cascade modes on one deployment through each request's `cascade` field.
        config = overlaid(load_profile("local-cpu.yaml"), load_profile("overlays/evaluation.yaml"))
        config["http_options"]["port"] = http_port
        args = app_args(config)
        backup = args["external"]["backup"]
        backup["base_url"] = external.base_url
        # The stand-in provider is a third engine on the same two cores as both tiers: while the overload
        # test saturates them it cannot carry the concurrent requests a remote provider would (even two
        # pass the 20 s first-token timeout), so the router is told its real capacity and patience here.
        backup["limits"].update(concurrency_slots=1, first_token_timeout_s=60)
        args["tiers"]["cheap"]["model"]["source"] = CHEAP_S3_URI  # fetched from S3 into the node's cache
        # Patient exports: on two saturated cores a batch can miss the SDK's 10 s and be dropped.
        args["observability"] = {"tracing": {"exporter": "otlp", "otlp_endpoint": spans.endpoint,
                                             "export_interval_ms": 500, "export_timeout_s": 60}}
        head.deploy(config)  # with the `serve deploy` CLI, as CI deploys
        wait_until_running(head.dashboard_url)
        http_url = f"http://127.0.0.1:{http_port}"
        wait_for("the HTTP proxy", lambda: get_json(f"{http_url}/health")["status"] == "ok", timeout_s=120)
        wait_for("the external API", lambda: get_json(f"{external.base_url}/models"), timeout_s=DEPLOY_TIMEOUT_S)
        prometheus, prometheus_url = start_prometheus(head.metrics_url, tmp_path_factory.mktemp("prometheus"))
    except BaseException:
        teardown()
        raise
    with SHARED.held(teardown):
        yield Stack(f"{http_url}/v1", http_url, head.dashboard_url, head.gcs_address, config, external,
                    head.metrics_url, spans, model_cache_dir, prometheus_url)


@pytest.fixture(scope="session")
def serve_handles(stack):
    """This test process as a Ray driver on the stack's cluster, for DeploymentHandle calls."""
    import ray
    from ray import serve

    ray.init(address=stack.gcs_address, log_to_driver=False)
    with SHARED.held(ray.shutdown):  # before the stack's teardown, which `held` runs later
        yield serve


@pytest.fixture(scope="session")
def client(stack):
    import openai

    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, timeout=300, max_retries=0)
