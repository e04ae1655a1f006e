"""One real stack per test run: a fresh Ray head on 127.0.0.1, and `serve deploy` of the local CPU
profile (both vLLM engines, the router) as CI would deploy it. Torn down even when tests fail, the
hard way, as `ray stop --force` on a node does: every Ray process is killed and the engines must
end by themselves; one that outlives the cluster fails the run (and is then reaped)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scripts.otlp_receiver import SpanCollector
from scripts.process_tree import describe, kill_ray, marked, stop_process_tree, survivors

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
APP = "llm"
DEPLOY_TIMEOUT_S = 900
RUN_MARKER = ("SERVE_APP_TEST_RUN", uuid.uuid4().hex)
"""In the environment of every process the test cluster starts, so teardown can tell its processes."""
ENGINE_EXIT_TIMEOUT_S = 60
"""How long a replica's engine processes may take to end after the replica (generous: two busy cores)."""
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
         "--enforce-eager", "--max-model-len=2048"],
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
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def error_of(response) -> dict:
    """The OpenAI error envelope of an httpx response, checked for its four fields."""
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(what: str, check, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(every_s)


def app_status(dashboard_url: str) -> dict:
    return get_json(f"{dashboard_url}/api/serve/applications/")["applications"].get(APP, {})


def wait_until_running(dashboard_url: str) -> None:
    def running():
        status = app_status(dashboard_url).get("status")
        if status == "DEPLOY_FAILED":
            raise pytest.fail.Exception(f"deploy failed: {app_status(dashboard_url).get('message')}")
        return status == "RUNNING"

    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while not running():
        if time.monotonic() > deadline:
            raise TimeoutError(f"app not RUNNING after {DEPLOY_TIMEOUT_S} s: {app_status(dashboard_url)}")
        time.sleep(3)


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


def stop_cluster(*nodes: subprocess.Popen, marker: tuple[str, str] = RUN_MARKER) -> None:
    """`ray stop --force` on the cluster's nodes (`ray start --block` processes), then every engine
    process must end by itself."""
    left = kill_ray(marker)
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=60)
    orphans = survivors(left, ENGINE_EXIT_TIMEOUT_S)
    described = describe(orphans)
    for node in nodes:  # whatever is left, so that a failure here leaves no process behind
        stop_process_tree(node, marker=marker)
    assert not orphans, f"engine processes outlived their cluster by {ENGINE_EXIT_TIMEOUT_S} s: {described}"
    assert not marked(*marker), describe(marked(*marker))


@pytest.fixture(scope="session")
def stack(tmp_path_factory, s3_env) -> Stack:
    # A throwaway loopback-only cluster: no token auth, so the CLI, the REST API and this driver
    # need no shared secret.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port, http_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    log_dir = tmp_path_factory.mktemp("logs")
    spans = SpanCollector()
    model_cache_dir = tmp_path_factory.mktemp("model-cache")
    external_process, external = start_external_api(log_dir)
    log = open(log_dir / "ray-start.log", "w")
    prometheus = None
    try:
        head = subprocess.Popen(
            [BIN / "ray", "start", "--head", "--block", "--disable-usage-stats",
             f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={metrics_port}",
             f"--runtime-env-agent-port={free_port()}", "--num-cpus=4", f"--temp-dir={temp_dir}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SERVE_APP_API_KEYS": ",".join(API_KEYS), RUN_MARKER[0]: RUN_MARKER[1],
                 "RAY_metrics_report_interval_ms": "2000",  # metrics reach the endpoint within 2 s, not 10
                 **s3_env, "SERVE_APP_MODEL_CACHE_DIR": str(model_cache_dir)},
        )
    except BaseException:
        stop_process_tree(external_process)
        spans.close()
        raise
    try:
        wait_for("the Ray dashboard", lambda: get_json(f"{dashboard_url}/api/version"), timeout_s=180)
        config = yaml.safe_load((ROOT / "configs" / "local-cpu.yaml").read_text())
        config["http_options"]["port"] = http_port  # the profile as shipped, on ports of the test's own
        backup = config["applications"][0]["args"]["external"]["backup"]
        backup["base_url"] = external.base_url
        # The stand-in provider is a third engine on the same two cores as both tiers: while the overload
        # test saturates them it cannot carry the concurrent requests a remote provider would (even two
        # pass the 20 s first-token timeout), so the router is told its real capacity and patience here.
        backup.update(concurrency_slots=1, first_token_timeout_s=60)
        args = config["applications"][0]["args"]
        args["tiers"]["cheap"]["model_source"] = CHEAP_S3_URI  # fetched from S3 into the node's cache
        args["observability"] = {"tracing": {"exporter": "otlp", "otlp_endpoint": spans.endpoint, "export_interval_ms": 500}}
        config_path = tmp_path_factory.mktemp("config") / "local-cpu.yaml"
        config_path.write_text(yaml.safe_dump(config))
        subprocess.run([BIN / "serve", "deploy", str(config_path), "-a", dashboard_url],
                       cwd=ROOT, check=True, timeout=300)
        wait_until_running(dashboard_url)
        http_url = f"http://127.0.0.1:{http_port}"
        wait_for("the HTTP proxy", lambda: get_json(f"{http_url}/health")["status"] == "ok", timeout_s=120)
        wait_for("the external API", lambda: get_json(f"{external.base_url}/models"), timeout_s=DEPLOY_TIMEOUT_S)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        prometheus, prometheus_url = start_prometheus(metrics_url, tmp_path_factory.mktemp("prometheus"))
        yield Stack(f"{http_url}/v1", http_url, dashboard_url, f"127.0.0.1:{gcs_port}", config, external,
                    metrics_url, spans, model_cache_dir, prometheus_url)
    finally:
        try:
            if prometheus is not None:
                stop_process_tree(prometheus)
            stop_process_tree(external_process)  # its own process group
            stop_cluster(head)
        finally:
            spans.close()
            log.close()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_handles(stack):
    """This test process as a Ray driver on the stack's cluster, for DeploymentHandle calls."""
    import ray
    from ray import serve

    ray.init(address=stack.gcs_address, log_to_driver=False)
    try:
        yield serve
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def client(stack):
    import openai

    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, timeout=300, max_retries=0)
