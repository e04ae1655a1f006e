"""Model weights on S3, cached on each node: upload with a manifest, fetch once per node, never load a
partial or corrupted copy.

    s3://bucket/prefix/                      the model folder's files, as they are
    s3://bucket/prefix/serve_app.manifest.json   written last: {files: [{path, size, sha256}]}

Fetching (`ensure_cached`) takes a file lock next to the cache entry, so replicas on one node download
once and the others wait and reuse it. Files go to a temporary folder through boto3's transfer manager
(concurrent ranged GETs of `chunk_size` bytes), are checked against the manifest's sizes and sha256,
and the folder is renamed into place in one step, with the manifest copied in last as the mark of a
complete entry. A leftover temporary folder (a killed download) is removed by the next fetch. A cache
entry that no longer matches its manifest is fetched again. Endpoint, region and credentials come from
boto3's own chain (AWS_ENDPOINT_URL_S3, AWS_PROFILE, instance roles, ...). No Ray, no vLLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serve_app.config import ModelStoreConfig

MANIFEST = "serve_app.manifest.json"
CACHE_DIR_ENV = "SERVE_APP_MODEL_CACHE_DIR"
MiB = 2**20
logger = logging.getLogger(__name__)


class ModelFetchError(RuntimeError):
    """The model could not be made available in the cache (S3 unreachable, missing, corrupt)."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps({"files": [asdict(f) for f in self.files]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(tuple(FileEntry(**f) for f in json.loads(text)["files"]))


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket:
            raise ValueError(f"not an s3://bucket/prefix URI: {uri!r}")
        return cls(bucket, prefix.strip("/"))

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class TransferSettings:
    """How a fetch uses S3: Run:ai's streamer and boto3's transfer manager both go for 8 MiB ranges
    on 8+ concurrent streams; retries are botocore's (standard mode, with backoff)."""

    max_concurrency: int = 8
    chunk_size_bytes: int = 8 * MiB
    max_attempts: int = 3
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0


def transfer_settings(config: ModelStoreConfig) -> TransferSettings:
    """The transfer settings the app's `model_store` section asks for."""
    return TransferSettings(max_concurrency=config.max_concurrency, chunk_size_bytes=config.chunk_size_mb * MiB,
                            max_attempts=config.max_attempts)


def sha256_of(path: Path, block: int = 8 * MiB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: Path) -> Manifest:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    with ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL on large blocks
        digests = list(pool.map(sha256_of, files))
    return Manifest(tuple(FileEntry(str(p.relative_to(folder)), p.stat().st_size, d) for p, d in zip(files, digests, strict=True)))


def s3_client(settings: TransferSettings = TransferSettings()):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
        max_pool_connections=max(10, settings.max_concurrency * 2),
    ))


def _transfer_config(settings: TransferSettings):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=settings.chunk_size_bytes, multipart_chunksize=settings.chunk_size_bytes,
                          max_concurrency=settings.max_concurrency, use_threads=True)


def upload(folder: Path, uri: str, client: Any = None, settings: TransferSettings = TransferSettings(),
           progress: Callable[[int], None] | None = None) -> Manifest:
    """Upload a model folder, then its manifest (last: a manifest means a complete upload)."""
    location, client = S3Location.parse(uri), client or s3_client(settings)
    manifest = build_manifest(folder)
    config = _transfer_config(settings)
    for entry in manifest.files:
        client.upload_file(str(folder / entry.path), location.bucket, location.key(entry.path), Config=config,
                           Callback=progress)
    client.put_object(Bucket=location.bucket, Key=location.key(MANIFEST), Body=manifest.to_json().encode())
    return manifest


def node_cache_dir(configured: str) -> Path:
    """This node's cache folder: its own SERVE_APP_MODEL_CACHE_DIR if set, else the configured one."""
    return Path(os.environ.get(CACHE_DIR_ENV) or configured).expanduser()


def cache_entry(cache_dir: Path, uri: str) -> Path:
    location = S3Location.parse(uri)
    return cache_dir / location.bucket / location.prefix


def is_complete(folder: Path, manifest: Manifest, verify_checksums: bool) -> bool:
    """Every file of the manifest is there with its size (and, if asked, its sha256)."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
        if verify_checksums and sha256_of(path) != entry.sha256:
            return False
    return True


def _remote_manifest(client: Any, location: S3Location) -> Manifest:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(MANIFEST))["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise ModelFetchError(f"{location} has no {MANIFEST}: upload it with scripts/model_store.py upload") from None
        raise ModelFetchError(f"cannot read {location}/{MANIFEST}: {code or exc}") from None
    except BotoCoreError as exc:  # endpoint unreachable, timeouts: botocore already retried
        raise ModelFetchError(f"cannot reach S3 for {location}: {exc}") from None
    return Manifest.from_json(body.decode())


@dataclass(frozen=True, slots=True)
class FetchResult:
    path: Path
    downloaded_bytes: int
    seconds: float

    @property
    def bytes_per_s(self) -> float:
        return self.downloaded_bytes / self.seconds if self.seconds else 0.0


def ensure_cached(uri: str, cache_dir: Path, client: Any = None, settings: TransferSettings = TransferSettings(),
                  verify_checksums: bool = True, progress: Callable[[int], None] | None = None,
                  lock_timeout_s: float = 3600) -> FetchResult:
    """The model at `uri` as a complete folder in `cache_dir`, downloading it if this node lacks it."""
    from filelock import FileLock, Timeout

    location, client = S3Location.parse(uri), client or s3_client(settings)
    target = cache_entry(cache_dir, uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with FileLock(str(target) + ".lock", timeout=lock_timeout_s):
            return _fetch_locked(location, target, client, settings, verify_checksums, progress, started)
    except Timeout:
        raise ModelFetchError(f"another process held the cache lock of {target} for {lock_timeout_s:g} s") from None


def _fetch_locked(location: S3Location, target: Path, client: Any, settings: TransferSettings,
                  verify_checksums: bool, progress: Callable[[int], None] | None, started: float) -> FetchResult:
    from botocore.exceptions import BotoCoreError, ClientError

    for stale in target.parent.glob(f".partial-{target.name}-*"):  # a download that was killed
        shutil.rmtree(stale, ignore_errors=True)
    manifest = _remote_manifest(client, location)
    cached = target / MANIFEST
    if cached.is_file() and Manifest.from_json(cached.read_text()) == manifest:
        if is_complete(target, manifest, verify_checksums):
            return FetchResult(target, 0, time.monotonic() - started)
        logger.warning("cache entry %s does not match its manifest: fetching it again", target)
    partial = target.parent / f".partial-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        config = _transfer_config(settings)
        for entry in manifest.files:
            destination = partial / entry.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            for attempt in (1, 2):  # a second try for damage in transit; the same bytes again mean a bad object
                try:
                    client.download_file(location.bucket, location.key(entry.path), str(destination), Config=config,
                                         Callback=progress)
                except (BotoCoreError, ClientError) as exc:
                    raise ModelFetchError(f"downloading {location}/{entry.path} failed: {exc}") from None
                if destination.stat().st_size == entry.size and (
                        not verify_checksums or sha256_of(destination) == entry.sha256):
                    break
                if attempt == 2:
                    raise ModelFetchError(f"{location}/{entry.path} does not match its manifest (size or sha256): "
                                          f"the object is corrupt or was replaced without a new manifest")
        (partial / MANIFEST).write_text(manifest.to_json())  # last: marks the entry complete
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return FetchResult(target, manifest.total_bytes, time.monotonic() - started)


def warm_page_cache(folder: Path, block: int = 8 * MiB) -> int:
    """Read every file once so the engine loads the weights from memory; returns the bytes read."""
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(block):
                total += len(chunk)
    return total
