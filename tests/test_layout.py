"""The layers tell the truth: no module of `serve_app` imports Ray, vLLM or `deployments`; inside it, every
import runs down the subpackage order and never sideways; tests reach scripts only through the shared
harness."""

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import serve_app

HEAVY = ("ray", "vllm", "torch", "deployments")
LAYERS = [
    {"core"},                              # value types every layer passes: requests, chunks, streams, errors, the ledger
    {"config"},                            # describes; builds nothing
    {"api", "observability", "models"},    # the OpenAI protocol; traces and metering; the model store
    {"routing"},                           # request policy, built from the config
    {"ingress", "analysis"},               # request handling on top; offline arithmetic beside it, off the request path
]
"""serve_app's subpackages from the bottom up: a module imports only from its own subpackage or a lower layer."""
ROOT = Path(__file__).resolve().parents[1]


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


def subpackage_imports(path: Path) -> set[str]:
    """The serve_app subpackages a module imports (at any depth of its code, lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if isinstance(node, ast.ImportFrom) and node.module == "serve_app":
            names = [f"serve_app.{alias.name}" for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("serve_app.")}
    return found


def layer_of(subpackage: str) -> int:
    return next(rank for rank, layer in enumerate(LAYERS) if subpackage in layer)


def test_every_subpackage_has_a_layer_and_nothing_lies_beside_them():
    package = ROOT / "serve_app"
    subpackages = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set().union(*LAYERS)
    assert sorted(p.name for p in package.glob("*.py")) == ["__init__.py"]


def test_imports_inside_serve_app_run_down_the_layers_never_sideways():
    offending = []
    for path in sorted((ROOT / "serve_app").rglob("*.py")):
        parts = path.relative_to(ROOT / "serve_app").parts
        if len(parts) < 2:
            continue
        own = parts[0]
        for other in subpackage_imports(path) - {own}:
            if layer_of(other) >= layer_of(own):
                offending.append(f"{path.relative_to(ROOT)} imports serve_app.{other}")
    assert not offending, offending


def test_the_layer_check_catches_an_import_against_the_order(tmp_path):
    upward = tmp_path / "module.py"
    upward.write_text("from serve_app.ingress.service import ApiService\nimport serve_app.routing.router\n")
    assert subpackage_imports(upward) == {"ingress", "routing"}
    assert layer_of("ingress") > layer_of("routing") > layer_of("config") > layer_of("core")
    assert layer_of("api") == layer_of("observability")  # siblings: neither may import the other


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


def test_every_result_file_the_docs_cite_is_committed_and_every_committed_one_is_cited():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    cited = set()
    for page in docs:
        for link in re.findall(r"\]\((?:docs/)?(results/[^)#\s]+)\)", page.read_text()):
            cited.add(link)
            assert (ROOT / "docs" / link).is_file(), f"{page.name} cites {link}, which is not committed"
    committed = {f"results/{path.name}" for path in (ROOT / "docs" / "results").iterdir()}
    assert committed - cited == set(), f"result files no page cites: {sorted(committed - cited)}"
