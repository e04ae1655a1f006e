"""The router's `user_config`: traffic between a tier's versions (canary, shadow, stable) and the canary guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt, model_validator

from serve_app.config.base import StrictModel

if TYPE_CHECKING:
    from serve_app.config.app import AppConfig


class CanaryGuardConfig(StrictModel):
    """When a canary is set back to 0 %, compared with its tier's stable version over recent requests."""

    min_requests: PositiveInt = 20
    """Canary requests seen before the guard judges (fewer say little)."""
    window: PositiveInt = 200
    """Recent requests per version the comparison uses."""
    max_error_rate_increase: float = Field(0.05, ge=0.0, le=1.0)
    """Roll back when the canary's share of failed requests exceeds the stable version's by more than this."""
    max_ttft_ratio: float | None = Field(2.0, gt=1.0)
    """Roll back when the canary's median time to first token exceeds the stable version's by this
    factor (null: TTFT is not judged)."""


class TierRollout(StrictModel):
    """Which versions of one tier serve its traffic."""

    stable: str | None = None
    """The version that serves the tier (blue/green: switch it and `serve deploy`); null: the tier's
    default version."""
    canary: str | None = None
    """A version that serves `canary_percent` of the traffic; a request it fails is answered by `stable`."""
    canary_percent: float = Field(0.0, ge=0.0, le=100.0)
    """Share of requests for the canary: by a hash of the session key (x-session-id header, else the
    OpenAI `user` field) when the request has one, so a conversation sticks to a version; else at random."""
    shadow: str | None = None
    """A version that receives a copy of `shadow_percent` of the requests; its answers are only compared
    with the primary's, never returned."""
    shadow_percent: float = Field(0.0, ge=0.0, le=100.0)
    """Share of requests mirrored to the shadow."""
    shadow_max_in_flight: PositiveInt = 4
    """Mirrored requests running at once; beyond it (or when the shadow version is busy) copies are dropped."""
    guard: CanaryGuardConfig = Field(default_factory=CanaryGuardConfig)
    """Automatic rollback of a failing or slow canary."""

    @model_validator(mode="after")
    def _roles_differ(self) -> TierRollout:
        if self.canary is not None and self.canary == self.stable:
            raise ValueError("canary must differ from stable")
        if self.shadow is not None and self.shadow == self.stable:
            raise ValueError("shadow must differ from stable")
        return self


class RolloutConfig(StrictModel):
    """The router deployment's `user_config`: traffic between versions. `serve deploy` applies a change
    of it in place (the router's reconfigure), without restarting a replica or failing a request."""

    rollouts: dict[str, TierRollout] = Field(default_factory=dict)
    """Per tier; a tier not named serves its default version only."""

    def check(self, app: AppConfig) -> RolloutConfig:
        """Raise ValueError naming the first rollout that names a tier or version the app lacks."""
        for tier, rollout in self.rollouts.items():
            if tier not in app.tiers:
                raise ValueError(f"rollouts: {tier!r} is not one of the tiers {sorted(app.tiers)}")
            versions = app.tiers[tier].all_versions()
            for role in ("stable", "canary", "shadow"):
                name = getattr(rollout, role)
                if name is not None and name not in versions:
                    raise ValueError(f"rollouts.{tier}.{role}: {name!r} is not one of its versions {sorted(versions)}")
            if rollout.canary_percent and rollout.canary is None:
                raise ValueError(f"rollouts.{tier}: canary_percent is set but no canary version is named")
            if rollout.shadow_percent and rollout.shadow is None:
                raise ValueError(f"rollouts.{tier}: shadow_percent is set but no shadow version is named")
            stable = rollout.stable or app.tiers[tier].default_version
            if stable in (rollout.canary, rollout.shadow):
                raise ValueError(f"rollouts.{tier}: {stable!r} is the stable version; canary and shadow must differ")
        return self
