"""The layers tell the truth: no module of `serve_app` imports Ray, vLLM or `deployments`, and tests reach
scripts only through the shared harness."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import serve_app

HEAVY = ("ray", "vllm", "torch", "deployments")


def every_module() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(serve_app.__path__, prefix="serve_app."))


def test_the_walk_finds_every_subpackage():
    names = every_module()
    for package in ("routing", "api", "observability", "models", "analysis"):
        assert f"serve_app.{package}" in names
    assert "serve_app.routing.router" in names and "serve_app.config" in names


def test_no_module_of_serve_app_imports_ray_vllm_or_deployments():
    # One fresh interpreter imports every module; then nothing heavy may be loaded.
    code = (
        "import importlib, json, sys\n"
        f"for name in {every_module()!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_tests_use_scripts_only_through_the_shared_harness():
    # Scripts are command-line front ends (tests run them as `python -m scripts.x`); what tests and
    # scripts share lives in scripts.harness.
    root = Path(__file__).resolve().parent
    offending = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "scripts":
                names = [f"scripts.{alias.name}" for alias in node.names]
            offending += [f"{path.relative_to(root)}: {name}" for name in names
                          if name.split(".")[0] == "scripts" and not name.startswith("scripts.harness")]
    assert not offending, offending


def test_the_readme_is_a_short_front_door_that_links_every_docs_page():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    missing = [page.name for page in (root / "docs").glob("*.md") if f"(docs/{page.name})" not in readme]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_module_of_the_service_reads_in_one_sitting():
    root = Path(__file__).resolve().parents[1]
    long = {str(path.relative_to(root)): n for folder in ("serve_app", "deployments")
            for path in (root / folder).rglob("*.py") if (n := len(path.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines: {long}"
