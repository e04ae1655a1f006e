"""scripts/overlay.py as a user runs it: a profile with the evaluation overlay, written and valid."""

import subprocess
import sys
from pathlib import Path

import yaml

from serve_app.config import AppConfig, serve_app_entry

ROOT = Path(__file__).resolve().parents[2]


def test_the_evaluation_overlay_makes_a_deployable_profile_that_takes_request_cascades(tmp_path):
    out = tmp_path / "eval.yaml"
    subprocess.run([sys.executable, "-m", "scripts.overlay", "configs/local-cpu.yaml",
                    "configs/overlays/evaluation.yaml", "--out", str(out)], cwd=ROOT, check=True)
    config = yaml.safe_load(out.read_text())
    assert config["http_options"] == yaml.safe_load((ROOT / "configs/local-cpu.yaml").read_text())["http_options"]
    assert AppConfig.model_validate(serve_app_entry(config)["args"]).cascade.allow_request_overrides


def test_an_overlay_naming_an_unknown_field_is_refused_by_name(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("cascade:\n  allow_request_overides: true\n")
    result = subprocess.run([sys.executable, "-m", "scripts.overlay", "configs/local-cpu.yaml", str(overlay)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "cascade.allow_request_overides" in result.stderr
