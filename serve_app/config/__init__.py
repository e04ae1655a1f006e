"""The one configuration tree, validated once in the app builder.

A Serve config file's `applications[].args` is an `AppConfig` (`app.py`); the router deployment's
`user_config` is a `RolloutConfig` (`rollouts.py`). Every model forbids unknown fields, so a typo
fails `serve deploy` with a message naming the field instead of being ignored. Every field has a
docstring; docs/config-reference.md is generated from them (scripts/config_reference.py).
"""

from serve_app.config.app import AppConfig, EngineVersion, serve_app_entry
from serve_app.config.base import (
    AUTO_ROUTE,
    BUILDER,
    PROJECT_ROOT,
    VERSION_MERGED_FIELDS,
    VERSION_NAME,
    DeploymentOptions,
    StrictModel,
    engine_deployment,
)
from serve_app.config.rollouts import CanaryGuardConfig, RolloutConfig, TierRollout
from serve_app.config.sections import (
    AccessConfig,
    CascadeConfig,
    LearnedRule,
    ModelStoreConfig,
    ObservabilityConfig,
    ResilienceConfig,
    RouterConfig,
    TracingConfig,
)
from serve_app.config.tiers import BackendLimits, ExternalConfig, TierConfig

__all__ = [
    "AUTO_ROUTE", "BUILDER", "PROJECT_ROOT", "VERSION_MERGED_FIELDS", "VERSION_NAME", "AccessConfig", "AppConfig",
    "BackendLimits", "CanaryGuardConfig", "CascadeConfig", "DeploymentOptions", "EngineVersion", "ExternalConfig",
    "LearnedRule", "ModelStoreConfig", "ObservabilityConfig", "ResilienceConfig", "RolloutConfig", "RouterConfig", "StrictModel",
    "TierConfig", "TierRollout", "TracingConfig", "engine_deployment", "serve_app_entry",
]
