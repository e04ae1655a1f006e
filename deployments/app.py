"""The app builder: the `import_path` of every Serve config (`deployments.app:build_app`).

    serve run configs/local-cpu.yaml
    serve deploy configs/local-cpu.yaml
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.models.tokenizers import check_shared_tokenizer


def build_app(args: dict[str, Any]) -> Application:
    """Validate the config tree (a bad field fails here, named) and wire the router to one engine
    deployment per version of each tier. Traffic between versions is the router's user_config
    (serve_app.config.RolloutConfig), set in the Serve config's `deployments` section. The replicas
    get the validated models (validated once, here)."""
    config = AppConfig.model_validate(args)
    if config.cascade.mode == "speculative" or config.cascade.allow_request_overrides:
        versions = {name: [(f"{name}@{v}", c.model.resolved()) for v, c in tier.all_versions().items()
                           if c.engine.kind == "vllm"]  # a synthetic model's tokens are the same for every tier
                    for name, tier in config.tiers.items()}
        for cheap in versions[config.cascade.cheap_tier]:
            for strong in versions[config.cascade.strong_tier]:
                check_shared_tokenizer(cheap, strong)
    from deployments.engine import LLMServer
    from deployments.router import Router

    engines = {
        engine.label: LLMServer.options(name=engine.deployment, **engine.config.replica_options()).bind(
            engine.label, engine.config, config.observability, config.model_store)
        for engine in config.engine_versions()
    }
    return Router.options(**config.router.deployment.serve_options()).bind(config, engines)
