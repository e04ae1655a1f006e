"""The S3 model store against a real S3 endpoint over HTTP on 127.0.0.1 (moto's server) with the real
boto3 client: upload, fetch, corruption on either side, two processes fetching at once, a killed
download, an unreachable endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from serve_app.models.store import MANIFEST, ModelFetchError, TransferSettings, cache_entry, ensure_cached, upload

ROOT = Path(__file__).resolve().parents[3]
URI = "s3://models/tiny/v1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SMALL = TransferSettings(chunk_size_bytes=5 * 2**20, max_concurrency=4)  # S3's smallest multipart part is 5 MiB


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    bucket = f"models-{tmp_path.name[-12:].lower().replace('_', '-')}"
    client.create_bucket(Bucket=bucket)
    return client, f"s3://{bucket}/tiny/v1"


@pytest.fixture
def model(tmp_path) -> Path:
    """A model-shaped folder: a 12 MiB weights file (multipart, several ranges) and small files."""
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(12 * 2**20))
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return folder


def same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_upload_then_fetch_once(s3, model, tmp_path):
    client, uri = s3
    manifest = upload(model, uri, client, SMALL)
    assert {f.path for f in manifest.files} == {"model.safetensors", "config.json", "tokenizer/vocab.txt"}
    cache = tmp_path / "cache"
    first = ensure_cached(uri, cache, client, SMALL)
    assert first.path == cache_entry(cache, uri) and same_files(model, first.path)
    assert first.downloaded_bytes == manifest.total_bytes and (first.path / MANIFEST).is_file()
    assert ensure_cached(uri, cache, client, SMALL).downloaded_bytes == 0  # already on this node


def test_a_corrupted_cache_is_fetched_again(s3, model, tmp_path):
    client, uri = s3
    upload(model, uri, client, SMALL)
    cache = tmp_path / "cache"
    path = ensure_cached(uri, cache, client, SMALL).path
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # same size, one bit pattern changed: only the checksum sees it
    weights.write_bytes(bytes(data))
    again = ensure_cached(uri, cache, client, SMALL)
    assert again.downloaded_bytes > 0 and same_files(model, again.path)


def test_a_corrupt_object_is_a_clear_error_and_leaves_no_cache(s3, model, tmp_path):
    client, uri = s3
    upload(model, uri, client, SMALL)
    bucket, key = uri[5:].split("/", 1)
    client.put_object(Bucket=bucket, Key=f"{key}/config.json", Body=b'{"num_hidden_layers": 3}')  # same size
    cache = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match="config.json does not match its manifest"):
        ensure_cached(uri, cache, client, SMALL)
    target = cache_entry(cache, uri)
    assert not target.exists() and not list(target.parent.glob(".partial-*"))


def test_a_missing_manifest_says_how_to_upload(s3, tmp_path):
    client, uri = s3
    with pytest.raises(ModelFetchError, match="has no serve_app.manifest.json"):
        ensure_cached(uri + "-absent", tmp_path / "cache", client, SMALL)


FETCH = """
import json, sys, time
from pathlib import Path
from serve_app.models.store import TransferSettings, ensure_cached
seen = []
def progress(n):
    seen.append(n)
    if sys.argv[3] == "die" and sum(seen) > 6 * 2**20:
        import os; os._exit(3)  # killed mid-download
    time.sleep(0.002)
result = ensure_cached(sys.argv[1], Path(sys.argv[2]), settings=TransferSettings(chunk_size_bytes=5 * 2**20, max_concurrency=2), progress=progress)
print(json.dumps({"downloaded": result.downloaded_bytes}))
"""


def fetch_in_process(uri: str, cache: Path, mode: str = "ok") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FETCH, uri, str(cache), mode], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_fetching_at_once_download_once(s3, model, tmp_path):
    client, uri = s3
    manifest = upload(model, uri, client, SMALL)
    cache = tmp_path / "cache"
    processes = [fetch_in_process(uri, cache), fetch_in_process(uri, cache)]
    results = []
    for p in processes:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out)["downloaded"])
    assert sorted(results) == [0, manifest.total_bytes]
    assert same_files(model, cache_entry(cache, uri))


def test_a_killed_download_leaves_nothing_usable_and_the_next_fetch_completes(s3, model, tmp_path):
    client, uri = s3
    manifest = upload(model, uri, client, SMALL)
    cache = tmp_path / "cache"
    killed = fetch_in_process(uri, cache, "die")
    killed.communicate(timeout=120)
    assert killed.returncode == 3
    target = cache_entry(cache, uri)
    assert not (target / MANIFEST).exists()                      # never marked complete
    assert list(target.parent.glob(".partial-*"))                # the debris a kill leaves
    result = ensure_cached(uri, cache, client, SMALL)
    assert result.downloaded_bytes == manifest.total_bytes and same_files(model, target)
    assert not list(target.parent.glob(".partial-*"))


def test_an_unreachable_endpoint_fails_clearly_after_bounded_retries(monkeypatch, tmp_path):
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}.items():  # nothing listens
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match="cannot reach S3"):
        ensure_cached(URI, tmp_path / "cache", settings=TransferSettings(max_attempts=2, connect_timeout_s=0.5))
    assert time.monotonic() - started < 30
