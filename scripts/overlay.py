"""Write a Serve config: a profile with an overlay of configs/overlays/ merged over its application args.

    .venv/bin/python -m scripts.overlay configs/local-cpu.yaml configs/overlays/evaluation.yaml [--out FILE]

The result is validated as the app builder would validate it; without --out it goes to standard output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from serve_app.config import AppConfig, overlaid, serve_app_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("overlay", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = overlaid(yaml.safe_load(args.profile.read_text()), yaml.safe_load(args.overlay.read_text()) or {})
    AppConfig.model_validate(serve_app_entry(config)["args"])
    text = f"# {args.profile} with {args.overlay} merged over its args (scripts/overlay.py)\n" + yaml.safe_dump(
        config, sort_keys=False)
    if args.out is None:
        sys.stdout.write(text)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
