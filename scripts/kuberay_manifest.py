"""Embed configs/gpu.yaml in the KubeRay manifest as its serveConfigV2 (a test fails while they differ).

    .venv/bin/python -m scripts.kuberay_manifest [--check] [--manifest FILE] [--profile FILE]

Only the `serveConfigV2: |` block of configs/kuberay-rayservice.yaml is rewritten; the rest of the
manifest (the Ray cluster: image, pods, secrets) is edited by hand and validated against the RayService
CRD by tests/configs/test_kuberay_manifest.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST, PROFILE = ROOT / "configs" / "kuberay-rayservice.yaml", ROOT / "configs" / "gpu.yaml"
BLOCK = re.compile(r"(?ms)^(  serveConfigV2: \|\n)(.*?)(?=^  \S)")


def embedded(manifest: str, profile: str) -> str:
    """The manifest with the profile (from its first setting on, comments above it left out) as serveConfigV2."""
    body = profile[profile.index("proxy_location"):]
    indented = "".join("    " + line if line.strip() else line for line in body.splitlines(keepends=True))
    result, count = BLOCK.subn(lambda m: m.group(1) + indented, manifest, count=1)
    if count != 1:
        raise ValueError("the manifest has no `  serveConfigV2: |` block")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the manifest is out of date, write nothing")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--profile", type=Path, default=PROFILE)
    args = parser.parse_args()
    current = args.manifest.read_text()
    wanted = embedded(current, args.profile.read_text())
    if args.check:
        sys.exit(0 if wanted == current else f"{args.manifest} is out of date: run python -m scripts.kuberay_manifest")
    args.manifest.write_text(wanted)
    print(f"wrote {args.manifest}")


if __name__ == "__main__":
    main()
