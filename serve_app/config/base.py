"""What every config model shares: strict pydantic models, names and paths, a deployment's Ray Serve
options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def under_project(path: str) -> str:
    """A config path as given, with a leading ./ made absolute under the project root."""
    return str(PROJECT_ROOT / path[2:]) if path.startswith("./") else path
AUTO_ROUTE = "auto"
BUILDER = "deployments.app:build_app"
"""The `import_path` of this project's application in a Serve config file."""


VERSION_NAME = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, section by section: nested maps merge key by key, anything else is replaced
    (a tier's versions over the tier; an overlay over a profile)."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return result


def engine_deployment(tier: str, version: str) -> str:
    """The Ray Serve deployment name of one version of a tier's engine."""
    return f"llm-{tier}-{version}"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RequestRouterOptions(StrictModel):
    """Ray Serve's request router for calls to a deployment: how a caller picks one of its replicas
    (passed to Ray Serve as `request_router_config`)."""

    request_router_class: str = Field(pattern=r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$")
    """Import path of a `ray.serve.request_router.RequestRouter`. For an engine tier with several
    replicas, `deployments.prefix_router:PrefixAffinityRouter` (Ray Serve LLM's prefix-cache-affinity
    router, taught this app's requests) sends a request to the replica whose past prompts share the
    longest prefix with it, while the replicas' queues stay within `imbalanced_threshold` of each other
    (docs/configuration.md)."""
    request_router_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the router's `initialize_state`."""


class DeploymentOptions(StrictModel):
    """Ray Serve options of one deployment, passed to `.options()` as they are."""

    num_replicas: PositiveInt | None = 1
    """Fixed replica count; set to null when `autoscaling_config` is given."""
    autoscaling_config: dict[str, Any] | None = None
    """Ray Serve autoscaling config (min_replicas, max_replicas, target_ongoing_requests, ...)."""
    max_ongoing_requests: PositiveInt = 64
    """Requests one replica works on at once; the engine batches these continuously."""
    max_queued_requests: int = -1
    """Requests queued per caller before Ray Serve rejects them (-1: unbounded)."""
    max_replicas_per_node: PositiveInt | None = None
    """Spread replicas: at most this many on one node (e.g. 1 for one replica per GPU node)."""
    max_surge_percent: int | None = Field(None, ge=0, le=100)
    """When `serve deploy` restarts replicas (a change of the app's args or code), start this share of
    extra replicas first, so old ones keep serving until their replacements run (100: zero-downtime
    restarts, at the price of that headroom); null: Ray's default, which stops old replicas first."""
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    """num_cpus, num_gpus, memory, resources, runtime_env of each replica."""
    health_check_timeout_s: float = Field(30.0, gt=0)
    """How long a health check may take before the replica counts as unhealthy."""
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    """How long a stopping replica (scaled down, replaced) may finish its in-flight requests before it is
    killed: long enough for the longest answer a client waits for."""
    request_router_config: RequestRouterOptions | None = None
    """How callers choose among this deployment's replicas; null: Ray Serve's default, power of two
    choices on queue length. Matters only with more than one replica."""

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError("set either num_replicas or autoscaling_config (with num_replicas: null), not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
