"""The one configuration tree, validated once in the app builder.

A Serve config file's `applications[].args` is an `AppConfig` (`app.py`); the router deployment's
`user_config` is a `RolloutConfig` (`rollouts.py`). Every model forbids unknown fields, so a typo
fails `serve deploy` with a message naming the field instead of being ignored. Every field has a
docstring; docs/config-reference.md is generated from them (scripts/config_reference.py).
"""

from serve_app.config.app import AppConfig, EngineVersion, check_serve_config, overlaid, serve_app_entry
from serve_app.config.base import (
    AUTO_ROUTE,
    BUILDER,
    PROJECT_ROOT,
    VERSION_NAME,
    DeploymentOptions,
    StrictModel,
    engine_deployment,
)
from serve_app.config.rollouts import CanaryGuardConfig, RolloutConfig, TierRollout
from serve_app.config.sections import (
    AccessConfig,
    AdaptiveCascade,
    CascadeConfig,
    CascadeMode,
    FeatureName,
    LearnedRule,
    ModelStoreConfig,
    ObservabilityConfig,
    ResilienceConfig,
    RouterConfig,
    ScorerName,
    TracingConfig,
    VerifierName,
)
from serve_app.config.tiers import (
    BackendLimits,
    EngineConfig,
    ExternalConfig,
    ModelConfig,
    PriceConfig,
    SyntheticEngineConfig,
    TierConfig,
    TierLimits,
)

__all__ = [
    "AUTO_ROUTE", "BUILDER", "PROJECT_ROOT", "VERSION_NAME", "AccessConfig", "AdaptiveCascade", "AppConfig", "BackendLimits",
    "CanaryGuardConfig", "CascadeConfig", "CascadeMode", "DeploymentOptions", "EngineConfig", "EngineVersion",
    "ExternalConfig", "FeatureName", "LearnedRule", "ModelConfig", "ModelStoreConfig", "ObservabilityConfig",
    "PriceConfig", "ResilienceConfig", "RolloutConfig", "RouterConfig", "ScorerName", "StrictModel", "SyntheticEngineConfig", "TierConfig",
    "TierLimits", "TierRollout", "TracingConfig", "VerifierName", "check_serve_config", "engine_deployment",
    "overlaid", "serve_app_entry",
]
