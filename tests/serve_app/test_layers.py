"""The layers tell the truth: no module of `serve_app` imports Ray, vLLM or `deployments`."""

import json
import pkgutil
import subprocess
import sys

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
