"""docs/config-reference.md is what scripts/config_reference.py writes from the config models."""

import subprocess
import sys
from pathlib import Path

from serve_app.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "config-reference.md"


def test_committed_reference_is_what_the_script_writes(tmp_path):
    out = tmp_path / "reference.md"
    subprocess.run([sys.executable, "-m", "scripts.config_reference", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert COMMITTED.read_text() == out.read_text(), "run: .venv/bin/python -m scripts.config_reference"


def test_every_field_of_the_application_config_is_documented():
    text = COMMITTED.read_text()
    for name, field in AppConfig.model_fields.items():
        assert field.description, f"AppConfig.{name} has no docstring"
        assert f"| `{name}` |" in text
