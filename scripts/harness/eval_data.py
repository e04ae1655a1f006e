"""The cascade's evaluation prompts: one JSON object per line (`id`, `kind`, `prompt`, `answer` and
the `check` that compares an answer with it: serve_app/analysis/cascade_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.harness.cluster import ROOT

EVAL_DATA = ROOT / "scripts" / "data" / "cascade_eval.jsonl"


def eval_items(path: Path = EVAL_DATA) -> list[dict]:
    """Every item of the file, in order (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
