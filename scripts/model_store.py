"""Put models on S3 and warm nodes' caches before replicas need them.

    .venv/bin/python -m scripts.model_store upload models/smollm2-135m-instruct s3://models/smollm2/v1
    .venv/bin/python -m scripts.model_store prefetch s3://models/smollm2/v1 [--warm]
    .venv/bin/python -m scripts.model_store prefetch --config configs/gpu.yaml --cluster auto [--warm]

`prefetch` alone fills this machine's cache, with a progress bar; with `--cluster` it runs one Ray task
pinned to every live node, each filling its own node's cache (its SERVE_APP_MODEL_CACHE_DIR, else the
config's `model_store.cache_dir`), so replicas scaled up later find the weights on local disk. `--warm`
also reads them once into the page cache. S3 endpoint and credentials: boto3's own chain
(AWS_ENDPOINT_URL_S3, AWS_PROFILE, ...).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

from serve_app.config import AppConfig, ModelStoreConfig
from serve_app.models.store import ensure_cached, node_cache_dir, transfer_settings, upload, warm_page_cache


def _progress_bar(total: int | None, label: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, smoothing=0.1)


def prefetch_here(uris: list[str], store: dict, warm: bool, show_progress: bool = False) -> dict:
    """Fill this node's cache with `uris`; what it took, per model."""
    config = ModelStoreConfig.model_validate(store)
    cache_dir, results = node_cache_dir(config.cache_dir), []
    for uri in uris:
        bar = _progress_bar(None, uri) if show_progress else None
        result = ensure_cached(uri, cache_dir, settings=transfer_settings(config), verify_checksums=config.verify_checksums,
                               progress=None if bar is None else bar.update)
        if bar is not None:
            bar.close()
        entry = {"uri": uri, "path": str(result.path), "downloaded_mb": round(result.downloaded_bytes / 1e6, 1),
                 "seconds": round(result.seconds, 2), "mb_per_s": round(result.bytes_per_s / 1e6, 1)}
        if warm:
            started = time.monotonic()
            entry["warmed_mb"] = round(warm_page_cache(result.path) / 1e6, 1)
            entry["warm_seconds"] = round(time.monotonic() - started, 2)
        results.append(entry)
    return {"node": socket.gethostname(), "cache_dir": str(cache_dir), "models": results}


def prefetch_cluster(address: str, uris: list[str], store: dict, warm: bool) -> list[dict]:
    """One task pinned to each live node of the cluster at `address`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(prefetch_here)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            uris, store, warm) for n in nodes]
        return [{"node_id": n["NodeID"], **result} for n, result in zip(nodes, ray.get(refs), strict=True)]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upload", help="upload a model folder and its manifest")
    up.add_argument("folder", type=Path)
    up.add_argument("uri")
    pre = commands.add_parser("prefetch", help="fill the node-local cache")
    pre.add_argument("uris", nargs="*")
    pre.add_argument("--config", type=Path, help="a Serve config: prefetch every s3:// tier, with its model_store settings")
    pre.add_argument("--cluster", help="Ray address (e.g. auto): prefetch on every node of that cluster")
    pre.add_argument("--warm", action="store_true", help="also read the weights into the page cache")
    args = parser.parse_args()

    if args.command == "upload":
        size = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file())
        with _progress_bar(size, f"upload {args.folder.name}") as bar:
            manifest = upload(args.folder, args.uri, progress=bar.update)
        print(json.dumps({"uri": args.uri, "files": len(manifest.files), "mb": round(manifest.total_bytes / 1e6, 1)}))
        return
    uris, store = list(args.uris), {}
    if args.config:
        app = AppConfig.from_serve_file(args.config)
        uris += [v.model.source for t in app.tiers.values() for v in t.all_versions().values() if v.model.from_s3]
        store = app.model_store.model_dump()
    if not uris:
        parser.error("no s3:// model to prefetch: give URIs or a --config with s3:// tiers")
    if args.cluster:
        print(json.dumps(prefetch_cluster(args.cluster, uris, store, args.warm), indent=1))
    else:
        print(json.dumps(prefetch_here(uris, store, args.warm, show_progress=True), indent=1))


if __name__ == "__main__":
    main()
