"""Replica cold start, phase by phase: from S3, from a prefetched cache, and prefetched with a warm page cache.

    .venv/bin/python -m scripts.bench_cold_start [--model models/smollm2-135m-instruct] [--endpoint URL]
        [--out bench-out/cold-start.json]

Without `--endpoint` it starts moto's S3 server on 127.0.0.1 and uploads the model there with the
project's own tool (scripts/model_store.py); with one it uses that endpoint and the usual boto3
credentials. Then, on a local Ray cluster, it deploys one engine replica (deployments/engine.py, as
the app does) whose model source is the s3:// URI, three times:
- cold: the node's cache is empty, the replica downloads;
- prefetched: the cache is filled beforehand (`prefetch`) and evicted from the page cache;
- warm: prefetched and read into the page cache (`prefetch --warm`).
For each it reports the replica's own phases (fetch, engine_init), the time from deploy to ready and
from ready to the first token. It also measures the limit the download can be compared with: one
plain ranged GET of the whole weights file from the same endpoint, in the same run, and the fetch's
rate over a sweep of range sizes and stream counts (the replicas use `model_store` of the config).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from serve_app.core.generation import GenerationChunk, GenerationRequest
from serve_app.models.store import (
    MiB,
    S3Location,
    TransferSettings,
    ensure_cached,
    s3_client,
    transfer_settings,
    upload,
    warm_page_cache,
)

ROOT = Path(__file__).resolve().parents[1]
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def evict_page_cache(folder: Path) -> None:
    """Drop the folder's files from the page cache (no root needed: posix_fadvise on clean pages)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def plain_ranged_read(uri: str, path: str, size: int) -> float:
    """Bytes per second of one GET with a Range header over the whole object, read and discarded."""
    location, client = S3Location.parse(uri), s3_client()
    started = time.monotonic()
    body = client.get_object(Bucket=location.bucket, Key=location.key(path), Range=f"bytes=0-{size - 1}")["Body"]
    read = 0
    while chunk := body.read(8 * MiB):
        read += len(chunk)
    assert read == size
    return size / (time.monotonic() - started)


def download_sweep(uri: str, chunks_mib=(8, 32, 128, 512), streams=(1, 8)) -> list[dict]:
    """The fetch's download rate (checksums off, into a fresh cache) per range size and stream count."""
    rows = []
    for chunk in chunks_mib:
        for concurrency in streams:
            cache = Path(tempfile.mkdtemp(prefix="sweep-"))
            try:
                result = ensure_cached(uri, cache, settings=TransferSettings(chunk_size_bytes=chunk * MiB,
                                                                             max_concurrency=concurrency),
                                       verify_checksums=False)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            rows.append({"range_mib": chunk, "streams": concurrency, "mb_per_s": round(result.bytes_per_s / 1e6, 1)})
    return rows


async def first_token_s(handle) -> float:
    started = time.monotonic()
    request = GenerationRequest("bench-first-token", {"max_tokens": 1}, prompt="The capital of France is")
    async for item in handle.options(stream=True).generate.remote(request):
        if isinstance(item, GenerationChunk):
            return time.monotonic() - started
    raise RuntimeError("the replica ended the stream without a token")


def start_replica(uri: str, tier, store: dict, cache_dir: Path, env: dict[str, str]) -> dict:
    from ray import serve

    from deployments.engine import LLMServer

    options = tier.replica_options()
    options["ray_actor_options"]["runtime_env"]["env_vars"].update(env)
    app = LLMServer.options(name="cold-start", **options).bind(
        "cold-start", tier.model_copy(update={"model": tier.model.model_copy(update={"source": uri})}).model_dump(), None, {**store, "cache_dir": str(cache_dir)})
    started = time.monotonic()
    handle = serve.run(app, name="cold-start", route_prefix=None)
    ready_s = time.monotonic() - started
    token_s = asyncio.run(first_token_s(handle))
    phases = handle.start_phases.remote().result()
    serve.delete("cold-start")
    return {"deploy_to_ready_s": round(ready_s, 2), "ready_to_first_token_s": round(token_s, 3),
            "deploy_to_first_token_s": round(ready_s + token_s, 2), "phases_s": {k: round(v, 2) for k, v in phases.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/smollm2-135m-instruct")
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: moto's server on 127.0.0.1)")
    parser.add_argument("--uri", default="s3://models/cold-start/v1")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/local-cpu.yaml", help="engine settings of its strong tier")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/cold-start.json")
    args = parser.parse_args()

    server = None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every range request
    if args.endpoint is None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"})
        s3_client().create_bucket(Bucket=S3Location.parse(args.uri).bucket)
    else:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.endpoint
    env = {k: os.environ[k] for k in (*S3_ENV, "AWS_ENDPOINT_URL_S3") if k in os.environ}

    import ray

    from serve_app.config import AppConfig

    app_config = AppConfig.from_serve_file(args.config)
    tier, store = app_config.tiers["strong"], app_config.model_store.model_dump()
    cache_dir = Path(tempfile.mkdtemp(prefix="cold-start-cache-"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        started = time.monotonic()
        manifest = upload(args.model, args.uri)
        upload_s = time.monotonic() - started
        largest = max(manifest.files, key=lambda f: f.size)
        baseline = plain_ranged_read(args.uri, largest.path, largest.size)
        sweep = download_sweep(args.uri)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        results = {}
        for case in ("cold", "prefetched", "warm"):
            shutil.rmtree(cache_dir, ignore_errors=True)
            if case != "cold":
                path = ensure_cached(args.uri, cache_dir, settings=transfer_settings(app_config.model_store)).path
                if case == "warm":
                    warm_page_cache(path)
                else:
                    evict_page_cache(path)
            results[case] = start_replica(args.uri, tier, store, cache_dir, env)
            print(json.dumps({case: results[case]}), flush=True)
        fetch_s = results["cold"]["phases_s"]["fetch"]
        report = {
            "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
            "model_mb": round(manifest.total_bytes / 1e6, 1), "upload_s": round(upload_s, 2),
            "plain_ranged_read_mb_per_s": round(baseline / 1e6, 1),
            "cold_fetch_mb_per_s": round(manifest.total_bytes / fetch_s / 1e6, 1),
            "cold_fetch_vs_plain_read": round(manifest.total_bytes / fetch_s / baseline, 2),
            "download_sweep": sweep,
            "cases": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
    finally:
        ray.shutdown()
        shutil.rmtree(cache_dir, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
