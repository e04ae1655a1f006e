"""The app builder: the `import_path` of every Serve config (`serve_app.app:build_app`).

    serve run configs/local-cpu.yaml
    serve deploy configs/local-cpu.yaml
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig, engine_deployment


def build_app(args: dict[str, Any]) -> Application:
    """Validate the config tree (a bad field fails here, named) and wire router -> tier engines."""
    config = AppConfig.model_validate(args)
    from deployments.engine import LLMServer
    from deployments.router import Router

    tiers = {
        name: LLMServer.options(name=engine_deployment(name), **tier.replica_options()).bind(
            name, tier.model_dump(), config.observability.tracing.model_dump(), config.model_store.model_dump())
        for name, tier in config.tiers.items()
    }
    return Router.options(**config.router.deployment.serve_options()).bind(config.model_dump(), tiers)
