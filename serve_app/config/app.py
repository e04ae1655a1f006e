"""The application's `args` (`AppConfig`), its engine versions, and reading and checking it in a Serve config file."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from serve_app.config.base import AUTO_ROUTE, BUILDER, StrictModel, engine_deployment, merged
from serve_app.config.rollouts import RolloutConfig
from serve_app.config.sections import (
    AccessConfig,
    CascadeConfig,
    ModelStoreConfig,
    ObservabilityConfig,
    ResilienceConfig,
    RouterConfig,
)
from serve_app.config.tiers import ExternalConfig, TierConfig


class AppConfig(StrictModel):
    """Arguments of `deployments.app:build_app`."""

    model_alias: str = "cascade"
    """A model name that means the `auto` route, for clients that must name one model."""
    tiers: dict[str, TierConfig]
    """Engine tiers by route name (e.g. cheap, strong)."""
    external: dict[str, ExternalConfig] = Field(default_factory=dict)
    """OpenAI-compatible APIs by name, usable as steps of fallback chains (not as routes)."""
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    """How the `auto` route combines the tiers."""
    router: RouterConfig = Field(default_factory=RouterConfig)
    """Options of the router deployment."""
    access: AccessConfig = Field(default_factory=AccessConfig)
    """API keys, per-key rate limits and the request size bound."""
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    """Fallback chains and circuit breakers."""
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    """Traces."""
    model_store: ModelStoreConfig = Field(default_factory=ModelStoreConfig)
    """Fetching s3:// model sources into each node's cache."""

    @model_validator(mode="after")
    def _routes_are_consistent(self) -> AppConfig:
        for field in ("cheap_tier", "strong_tier"):
            name = getattr(self.cascade, field)
            if name not in self.tiers:
                raise ValueError(f"cascade.{field}: {name!r} is not one of the tiers {sorted(self.tiers)}")
        reserved = {AUTO_ROUTE, self.model_alias} & set(self.tiers)
        if reserved:
            raise ValueError(f"tiers: {sorted(reserved)} is reserved for the cascade route")
        clash = sorted(set(self.external) & {AUTO_ROUTE, self.model_alias, *self.tiers})
        if clash:
            raise ValueError(f"external: {clash} already name a route")
        routes, steps = {AUTO_ROUTE, *self.tiers}, {AUTO_ROUTE, *self.tiers, *self.external}
        for route, chain in self.resilience.fallbacks.items():
            if route not in routes:
                raise ValueError(f"resilience.fallbacks: {route!r} is not a route; choose from {sorted(routes)}")
            unknown = sorted(set(chain) - steps)
            if unknown:
                raise ValueError(f"resilience.fallbacks.{route}: {unknown} are neither routes nor external APIs")
            if route in chain or len(set(chain)) != len(chain):
                raise ValueError(f"resilience.fallbacks.{route}: a chain may not repeat a route")
        return self

    @classmethod
    def from_serve_file(cls, path: str | Path, app: str | None = None) -> AppConfig:
        """The validated args of this project's application in a Serve config file (the one named `app`,
        or the first whose import_path is the builder)."""
        return cls.model_validate(serve_app_entry(yaml.safe_load(Path(path).read_text()), app).get("args") or {})

    def engine_versions(self) -> list[EngineVersion]:
        """Every engine deployment of the app: one per version of each tier."""
        found = []
        for tier, config in self.tiers.items():
            versions = config.all_versions()
            found += [EngineVersion(tier, name, version, tier if len(versions) == 1 else f"{tier}@{name}")
                      for name, version in versions.items()]
        return found


@dataclass(frozen=True)
class EngineVersion:
    tier: str
    version: str
    config: TierConfig
    label: str
    """The backend's name in metrics, health and attempts: the tier's name while it has one version,
    else tier@version."""

    @property
    def deployment(self) -> str:
        return engine_deployment(self.tier, self.version)


def overlaid(serve_config: dict, overlay: dict, app: str | None = None) -> dict:
    """A Serve config with `overlay` merged over this project's application args (configs/overlays/): the
    profile as shipped, changed only where the overlay says."""
    result = copy.deepcopy(serve_config)
    entry = serve_app_entry(result, app)
    entry["args"] = merged(entry.get("args") or {}, overlay)
    return result


def serve_app_entry(serve_config: dict, app: str | None = None) -> dict:
    """This project's application in a Serve config (a dict as `serve deploy` reads it)."""
    for entry in serve_config.get("applications", []):
        if entry.get("import_path") == BUILDER and app in (None, entry.get("name")):
            return entry
    raise ValueError(f"no application {app or ''} with import_path {BUILDER} in the Serve config".replace("  ", " "))


def check_serve_config(serve_config: dict) -> dict[str, dict[str, dict]]:
    """What `scripts/rollout.py check` prints: per application of this project (in a Serve config as
    `serve deploy` reads it), per tier: its versions and the traffic the rollout gives them.
    Raises ValueError naming the application and the field at fault."""
    found = {}
    for app in serve_config.get("applications", []):
        if app.get("import_path") != BUILDER:
            continue
        name = app.get("name", "default")
        try:
            config = AppConfig.model_validate(app.get("args") or {})
            router = next((d for d in app.get("deployments", []) if d.get("name") == "router"), {})
            rollouts = RolloutConfig.model_validate(router.get("user_config") or {}).check(config)
        except ValueError as exc:
            raise ValueError(f"application {name!r}: {exc}") from None
        found[name] = {}
        for tier, tier_config in config.tiers.items():
            rollout = rollouts.rollouts.get(tier)
            found[name][tier] = {
                "versions": list(tier_config.all_versions()),
                "stable": (rollout and rollout.stable) or tier_config.default_version,
                "canary": rollout and rollout.canary and f"{rollout.canary} {rollout.canary_percent:g} %",
                "shadow": rollout and rollout.shadow and f"{rollout.shadow} {rollout.shadow_percent:g} %",
            }
    return found
