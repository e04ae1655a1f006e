"""A throwaway Ray cluster on 127.0.0.1, as the end-to-end tests and the benchmarks start it: a head
node on free ports (`RayHead.start`), the app deployed as `serve deploy` sends it, waits on what can be
observed (the dashboard answers, the app is RUNNING), and a teardown that leaves no process behind.

Every process a cluster starts carries a marker in its environment (`marker`), so the teardown can tell
them from any other Ray on the machine. `stop_cluster` ends a cluster the hard way, as `ray stop
--force` does on a node: every Ray process is killed, and the replicas' engines must end by themselves.
"""

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.harness.processes import describe, kill_ray, marked, stop_process_tree, survivors
from serve_app.config import serve_app_entry

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
APP = "llm"
"""The application's name in every profile."""
DEPLOY_TIMEOUT_S = 900
"""How long an app may take to become RUNNING (two vLLM engines loading on two busy cores)."""
ENGINE_EXIT_TIMEOUT_S = 60
"""How long a replica's engine processes may take to end after the replica (generous: two busy cores)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


INGRESSES = ("serve-proxy", "haproxy")
"""What takes a cluster's HTTP port: Ray Serve's Python proxy (its default), or its HAProxy ingress."""


THROUGHPUT_OPTIMIZED_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
"""Ray Serve's throughput-optimized mode: calls between deployments over gRPC by value instead of Ray
object refs, user code and the handle's router on the replica's own event loop, garbage collection frozen
after start-up, request logs buffered (measured in docs/benchmarks.md, "Throughput-optimized Serve")."""


def ingress_env(ingress: str) -> dict[str, str]:
    """A Ray head's environment for `ingress`. For "haproxy" (`RAY_SERVE_ENABLE_HA_PROXY=1`), HAProxy
    takes the HTTP port in place of Serve's Python proxy and forwards each request to an HTTP server in
    the router replica itself, so a streamed token crosses one Ray hop, not two. Its stats page and
    Prometheus exporter get free ports (Ray's defaults, 8404 and 9101, allow one cluster per machine);
    Ray's template binds those two on every interface. It runs Ray Serve's throughput-optimized mode
    with it, as the KubeRay manifest does (THROUGHPUT_OPTIMIZED_ENV)."""
    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r}; known: {INGRESSES}")
    if ingress == "serve-proxy":
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), **THROUGHPUT_OPTIMIZED_ENV}


def haproxy_files(temp_dir: str) -> dict[str, str]:
    """Ray Serve's HAProxy ingress keeps its config, admin and metrics sockets, server state and logs in
    /tmp/haproxy-serve/<node id>/ by default, which outlives the cluster; these settings move them into the
    cluster's own temp dir, which its teardown removes (the admin socket path stays under Unix's 108 bytes)."""
    base = f"{temp_dir}/haproxy"
    return {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{base}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{base}/admin.sock",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{base}/metrics.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{base}/server-state"}


def assignments(items: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` items (command-line environment settings) as a dict."""
    return dict(item.split("=", 1) for item in items if item)


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 2.0,
             watch: Iterable[subprocess.Popen] = ()) -> Any:
    """Poll `check` until it returns something true (exceptions count as not yet) and return that; fail
    after `timeout_s`, or at once when a process in `watch` has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        if any(process.poll() is not None for process in watch):
            raise RuntimeError(f"gave up waiting for {what}: a process it needs exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(every_s)


def load_profile(name: str | Path = "local-cpu.yaml") -> dict:
    """A Serve config file of configs/ (or any path) as the dict `serve deploy` reads, with YAML aliases
    (a profile's shared engine section) made into copies, so that editing one tier leaves the other."""
    path = Path(name)
    return json.loads(json.dumps(yaml.safe_load((path if path.is_absolute() or path.exists()
                                                 else ROOT / "configs" / path).read_text())))


def app_args(serve_config: dict) -> dict:
    """The args of this project's application in a Serve config (a live reference: edit them in place)."""
    return serve_app_entry(serve_config)["args"]


def app_status(dashboard_url: str, app: str = APP) -> dict:
    return get_json(f"{dashboard_url}/api/serve/applications/")["applications"].get(app, {})


def running_replicas(dashboard_url: str, deployment: str, app: str = APP) -> int:
    """How many replicas of `deployment` Serve reports RUNNING."""
    replicas = app_status(dashboard_url, app).get("deployments", {}).get(deployment, {}).get("replicas", [])
    return sum(replica["state"] == "RUNNING" for replica in replicas)


def wait_idle(url: str, timeout_s: float = 300) -> None:
    """Until the router at `url` counts nothing in flight at any backend (the last burst's answers are done)."""
    wait_for("the service to go idle", lambda: all(
        b["in_flight"] == 0 for b in get_json(f"{url}/health")["backends"].values()), timeout_s, every_s=1)


def wait_until_running(dashboard_url: str, timeout_s: float = DEPLOY_TIMEOUT_S, app: str = APP) -> None:
    """Until the app is RUNNING; DeployFailed at once if Serve gives up on it."""
    deadline = time.monotonic() + timeout_s
    while (status := app_status(dashboard_url, app)).get("status") != "RUNNING":
        if status.get("status") == "DEPLOY_FAILED":
            raise DeployFailed(f"deploy failed: {status.get('message')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"app not RUNNING after {timeout_s:.0f} s: {status}")
        time.sleep(3)


class DeployFailed(RuntimeError):
    pass


@dataclass
class RayHead:
    """A single-node cluster: `ray start --head --block` on free loopback ports, its own temp dir."""

    process: subprocess.Popen
    dashboard_url: str
    gcs_address: str
    metrics_url: str
    temp_dir: str
    marker: tuple[str, str]
    env: dict[str, str]

    @classmethod
    def start(cls, log: Path, marker: tuple[str, str], env: dict[str, str] | None = None,
              num_cpus: int = 4) -> RayHead:
        """Start a head (no token auth: a loopback cluster the CLI, the REST API and a driver share) and
        wait until its dashboard answers. `env` is added to this process's environment for the cluster."""
        os.environ["RAY_AUTH_MODE"] = "disabled"  # for drivers this process starts or becomes
        temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
        gcs_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
        full_env = {**os.environ, **(env or {}), **haproxy_files(temp_dir), marker[0]: marker[1]}
        with open(log, "w") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [BIN / "ray", "start", "--head", "--block", "--disable-usage-stats",
                 f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={metrics_port}",
                 f"--runtime-env-agent-port={free_port()}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
        head = cls(process, f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}",
                   f"http://127.0.0.1:{metrics_port}/metrics", temp_dir, marker, full_env)
        try:
            wait_for("the Ray dashboard", lambda: get_json(f"{head.dashboard_url}/api/version"), 180, watch=[process])
        except BaseException:
            head.stop()
            raise
        return head

    def deploy(self, serve_config: dict, cli: bool = True) -> float:
        """Deploy as CI does, with the `serve deploy` CLI, or (`cli=False`) send what it sends
        (PUT /api/serve/applications/; the CLI itself takes minutes to start on two busy cores).
        Returns when the deploy was accepted (monotonic clock)."""
        if cli:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.temp_dir, delete=False) as file:
                yaml.safe_dump(serve_config, file)
            subprocess.run([BIN / "serve", "deploy", file.name, "-a", self.dashboard_url],
                           cwd=ROOT, env=self.env, check=True, timeout=300)
        else:
            request = urllib.request.Request(f"{self.dashboard_url}/api/serve/applications/", method="PUT",
                                             data=json.dumps(serve_config).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=300).close()
        return time.monotonic()

    def stop(self) -> None:
        """Gracefully: `serve shutdown`, then the head's process group and everything carrying the marker."""
        with contextlib.suppress(Exception):
            subprocess.run([BIN / "serve", "shutdown", "-a", self.dashboard_url, "-y"], env=self.env,
                           capture_output=True, timeout=120)
        try:
            stop_process_tree(self.process, marker=self.marker)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def kill(self) -> None:
        """The hard way (`stop_cluster`): raises AssertionError if an engine outlived the cluster."""
        try:
            stop_cluster(self.process, marker=self.marker)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def serving(serve_config: dict, log: Path, marker: tuple[str, str], env: dict[str, str] | None = None,
            while_starting: Callable[[str], None] | None = None) -> Iterator[tuple[str, RayHead]]:
    """`serve_config` served by a Ray head of its own (`RayHead.start`) on a free HTTP port (set in it), as
    `serve deploy` sends it; yields the app's base URL, once /health answers ok, and the head. With
    `while_starting`, it is called with the URL every 2 s from the deploy on until /health answers ok (traffic
    that arrives while the app starts; it handles its own connection errors). The cluster is killed when the
    block ends (`RayHead.kill`), however it ends."""
    head = RayHead.start(log, marker, env=env)
    try:
        port = free_port()
        serve_config["http_options"]["port"] = port
        head.deploy(serve_config, cli=False)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if while_starting is not None:
                while_starting(url)
            return get_json(f"{url}/health")["status"] == "ok"

        if while_starting is not None:
            wait_for("the app's /health while traffic arrives", ready, timeout_s=DEPLOY_TIMEOUT_S)
        wait_until_running(head.dashboard_url)
        wait_for("the app's /health", lambda: get_json(f"{url}/health")["status"] == "ok", timeout_s=120)
        yield url, head
    finally:
        head.kill()


def stop_cluster(*nodes: subprocess.Popen, marker: tuple[str, str]) -> None:
    """`ray stop --force` on the cluster's nodes (`ray start --block` processes): every process carrying
    `marker` except the replicas' engines is killed; then every engine process must end by itself within
    ENGINE_EXIT_TIMEOUT_S, or AssertionError (after reaping what is left, so nothing stays behind)."""
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
