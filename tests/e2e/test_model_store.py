"""A tier whose model.source is s3://: the stack's cheap tier is fetched from a real S3 endpoint (moto's
server on 127.0.0.1, see conftest) into the node's cache, verified, and served from there."""

from __future__ import annotations

import pytest

from scripts.harness.cluster import ROOT, wait_for
from scripts.harness.metrics import find, scrape
from serve_app.models.store import MANIFEST, Manifest, build_manifest, cache_entry
from tests.e2e.conftest import CHEAP_S3_URI

pytestmark = pytest.mark.e2e


def test_the_s3_tier_answers_from_its_nodes_cache(client, stack):
    raw = client.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
    assert raw.headers["x-served-by"] == "cheap" and raw.parse().choices[0].message.content.strip()
    assert {m.id: m.root for m in client.models.list()}["cheap"] == CHEAP_S3_URI
    entry = cache_entry(stack.model_cache_dir, CHEAP_S3_URI)
    manifest = Manifest.from_json((entry / MANIFEST).read_text())
    assert manifest == build_manifest(ROOT / "models" / "smollm2-135m-instruct-pruned")  # the same bytes
    assert not list(entry.parent.glob(".partial-*"))
    phases = wait_for("the cheap tier's start phases", lambda: find(scrape(stack.metrics_url),
                      "ray_serve_app_engine_start_seconds", tier="cheap", phase="fetch"), timeout_s=180, every_s=1)
    assert phases[0] > 0
