"""Two Ray nodes on this machine (a head, and a second `ray start --address ...`), each with its own
model cache: prefetch runs once on each node, and replicas placed one per node serve from their own
node's cache without downloading. A cluster of its own, after the session's stack is stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from scripts.harness.cluster import BIN, ROOT, free_port, stop_cluster
from serve_app.models.store import cache_entry
from tests.e2e.conftest import CHEAP_S3_URI, OWN_CLUSTER_STAGE

pytestmark = [pytest.mark.e2e, pytest.mark.stage(OWN_CLUSTER_STAGE)]  # a cluster of its own, once the stack is gone

DRIVER = r"""
import asyncio, json, sys, time
import ray
from ray import serve
from deployments.engine import LLMServer
from serve_app.config import AppConfig
from serve_app.core.generation import GenerationChunk, GenerationRequest

address, uri = sys.argv[1], sys.argv[2]
ray.init(address=address, log_to_driver=False)
tier = AppConfig.from_serve_file("configs/local-cpu.yaml").tiers["cheap"]
options = tier.replica_options()
options.update(num_replicas=2, max_replicas_per_node=1)
app = LLMServer.options(name="llm-cheap", **options).bind("cheap", tier.model_copy(update={"model": tier.model.model_copy(update={"source": uri})}).model_dump())
handle = serve.run(app, name="two-nodes", route_prefix=None)

async def ask(i):
    request = GenerationRequest(f"r{i}", {"max_tokens": 8}, prompt="The capital of France is")
    return [c async for c in handle.options(stream=True).generate.remote(request) if isinstance(c, GenerationChunk)]

async def load():
    return await asyncio.gather(*(ask(i) for i in range(8)))

answers = asyncio.run(load())
infos = {}
deadline = time.monotonic() + 60
while len(infos) < 2 and time.monotonic() < deadline:
    info = handle.replica_info.remote().result()
    infos[info["replica"]] = info
print(json.dumps({"answers": ["".join(c.text for c in a) for a in answers], "replicas": list(infos.values())}))
serve.shutdown()
"""


@pytest.fixture
def two_nodes(s3_env, tmp_path):
    marker = ("SERVE_APP_TEST_RUN", f"two-nodes-{uuid.uuid4().hex}")
    temp_dir = tempfile.mkdtemp(prefix="rt2-", dir="/tmp")
    caches = {"head": tmp_path / "cache-head", "worker": tmp_path / "cache-worker"}
    port = free_port()
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled", marker[0]: marker[1]}

    def node(name: str, first: list[str], worker_ports: str) -> subprocess.Popen:
        low, high = worker_ports.split("-")
        return subprocess.Popen(
            [BIN / "ray", "start", "--block", "--disable-usage-stats", *first, "--num-cpus=2",
             f'--resources={{"{name}": 1}}', f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--min-worker-port={low}", f"--max-worker-port={high}"],
            cwd=ROOT, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "SERVE_APP_MODEL_CACHE_DIR": str(caches[name])})

    head = node("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                         f"--ray-client-server-port={free_port()}"], "23000-23499")
    worker = None
    try:
        worker = node("worker", [f"--address=127.0.0.1:{port}"], "23500-23999")
        wait = ("import ray, sys, time\nray.init(address=sys.argv[1], log_to_driver=False)\n"
                "deadline = time.monotonic() + 180\n"
                "while sum(n['Alive'] for n in ray.nodes()) < 2:\n"
                "    assert time.monotonic() < deadline, ray.nodes()\n    time.sleep(1)\n")
        subprocess.run([BIN / "python", "-c", wait, f"127.0.0.1:{port}"], cwd=ROOT, env=env, check=True, timeout=300)
        yield f"127.0.0.1:{port}", caches, env
    finally:
        try:
            stop_cluster(*(p for p in (worker, head) if p is not None), marker=marker)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def run_json(args: list, env: dict, timeout: float = 900):
    """The first JSON document a command prints (Ray logs around it on stdout)."""
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for start in range(len(lines)):
        if lines[start].startswith(("[", "{")):
            try:
                return json.JSONDecoder().raw_decode("\n".join(lines[start:]))[0]
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON in the output: {result.stdout[-2000:]}")


def test_prefetch_once_per_node_then_replicas_serve_from_their_nodes_cache(two_nodes):
    address, caches, env = two_nodes
    prefetch = [BIN / "python", "-m", "scripts.model_store", "prefetch", CHEAP_S3_URI, "--cluster", address]
    first = run_json(prefetch, env)
    assert sorted(r["cache_dir"] for r in first) == sorted(str(c) for c in caches.values())
    assert all(r["models"][0]["downloaded_mb"] > 0 for r in first)  # each node fetched its own copy
    again = run_json(prefetch, env)
    assert all(r["models"][0]["downloaded_mb"] == 0 for r in again)  # once per node

    result = run_json([BIN / "python", "-c", DRIVER, address, CHEAP_S3_URI], env)
    assert all(answer.strip() for answer in result["answers"])
    replicas = result["replicas"]
    assert len(replicas) == 2 and len({r["node_id"] for r in replicas}) == 2
    own = {str(cache_entry(c, CHEAP_S3_URI)) for c in caches.values()}
    assert {r["model_path"] for r in replicas} == own            # each from its own node's cache
    assert all(r["fetched_bytes"] == 0 for r in replicas)        # nothing downloaded: prefetched
    assert all(r["served"] > 0 for r in replicas), replicas
