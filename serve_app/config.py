"""The one configuration tree, validated once in the app builder.

A Serve config file's `applications[].args` is an `AppConfig`. Every model forbids unknown fields,
so a typo fails `serve deploy` with a message naming the field instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from serve_app.observability.metering import Price
from serve_app.routing.scorers import SCORERS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AUTO_ROUTE = "auto"
BUILDER = "deployments.app:build_app"
"""The `import_path` of this project's application in a Serve config file."""


VERSION_NAME = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
VERSION_MERGED_FIELDS = ("engine_kwargs", "env_vars")
"""Fields a version merges into the tier's (key by key); a version replaces every other field it sets."""


def engine_deployment(tier: str, version: str) -> str:
    """The Ray Serve deployment name of one version of a tier's engine."""
    return f"llm-{tier}-{version}"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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
    health_check_period_s: float = Field(10.0, gt=0)
    """How often Ray Serve calls the replica's `check_health`."""
    health_check_timeout_s: float = Field(30.0, gt=0)
    """How long a health check may take before the replica counts as unhealthy."""
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    """How long a stopping replica may drain in-flight requests."""

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError("set either num_replicas or autoscaling_config (with num_replicas: null), not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BackendLimits(StrictModel):
    """How the router treats one backend (an engine tier or an external API)."""

    first_token_timeout_s: float = Field(60.0, gt=0)
    """The router gives up on this backend (and falls back) when its first token takes longer."""
    total_timeout_s: float = Field(600.0, gt=0)
    """The router abandons a generation on this backend that runs longer than this in all."""
    concurrency_slots: PositiveInt = 32
    """Requests this backend serves at once without queueing: its measured batching capacity at
    acceptable TPOT. For an engine tier, per replica (at most its max_ongoing_requests, so that Ray
    Serve queues the rest), and the router multiplies it by the replicas running at the moment
    (autoscaling, a replica lost); for an external API, in all. Load shedding admits requests beyond
    it only while their expected wait fits the TTFT target."""


class TierConfig(BackendLimits):
    """One model tier: one vLLM engine deployment per version of its model."""

    model_source: str | None = None
    """A local folder (absolute, or starting with ./ relative to the project root), an s3://bucket/prefix
    uploaded by scripts/model_store.py (fetched into each node's cache, see `model_store`), or a hub id.
    Null when every version is listed under `versions`."""
    version: str = Field("v1", pattern=VERSION_NAME)
    """Name of the version the tier's own fields describe; its engine deployment is llm-<tier>-<version>."""
    versions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """More versions deployed beside it (canary, shadow, blue/green; see `rollouts`), by name: each is
    this tier with the fields given replaced (engine_kwargs and env_vars merged key by key), e.g.
    {v2: {model_source: s3://models/strong/v2}}. Adding or removing one changes the app's args, so Ray
    Serve restarts every replica of the app (see `max_surge_percent`); moving traffic does not."""
    served_model_name: str | None = None
    """Name of the underlying model reported by the engine; defaults to `model_source`."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """vLLM `AsyncEngineArgs` fields (dtype, max_model_len, enable_prefix_caching, quantization,
    tensor_parallel_size, speculative_config, ...), passed through unchanged and checked against
    vLLM's own field list when the replica starts."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment of the replica (e.g. VLLM_CPU_KVCACHE_SPACE), merged into its runtime_env."""
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    """Ray Serve options of this tier's engine deployment."""
    usd_per_replica_hour: float = Field(0.0, ge=0)
    """What one replica costs per hour (its GPU or CPU share of a node); prices each request by the
    replica-seconds it held (serve_app.observability.metering)."""
    peak_memory_bandwidth_gb_s: float | None = Field(None, gt=0)
    """The replica's accelerator memory bandwidth, for MBU (e.g. 3350 for an H100 SXM); null: probed on
    the replica's CPU when it starts."""
    peak_tflops: float | None = Field(None, gt=0)
    """Dense TFLOP/s at the engine's dtype, for MFU (e.g. 989 for an H100 SXM in bf16); null: probed."""
    warm_up_tokens: int = Field(16, ge=0)
    """Before a replica takes traffic, it generates this many tokens for each of a full batch
    (`concurrency_slots`) of short distinct prompts: the first live requests do not pay for cold
    kernels, and the router takes the batch's TTFT and TPOT as the tier's speed until live requests
    teach better (without them a tier starts in slow start). 0: no warm-up."""
    dispatch_timeout_s: float | None = Field(5.0, gt=0)
    """While the tier has a free slot, how long a request may wait for a replica to take it (an engine
    acknowledges at once) before the tier counts as having no live replica (it died, its replacement
    is starting) and the request falls back. Null: only the first-token timeout applies."""

    @model_validator(mode="after")
    def _versions_are_tiers(self) -> TierConfig:
        if self.versions:
            self.all_versions()  # each version validates as a whole tier, naming its field on error
        elif self.model_source is None:
            raise ValueError("model_source is required (or list the tier's versions under `versions`)")
        return self

    def all_versions(self) -> dict[str, TierConfig]:
        """Every version deployed, by name: the tier's own (when it names a model_source) first."""
        base = self.model_dump(exclude={"versions", "version"}, exclude_unset=True)
        found = {self.version: self.model_copy(update={"versions": {}})} if self.model_source else {}
        for name, override in self.versions.items():
            if name in found:
                raise ValueError(f"versions: {name!r} is already the tier's own version")
            merged = {**base, **override, "version": name}
            for field in VERSION_MERGED_FIELDS:
                merged[field] = {**base.get(field, {}), **override.get(field, {})}
            if "versions" in override:
                raise ValueError(f"versions.{name}: a version cannot list versions")
            try:
                found[name] = TierConfig.model_validate(merged)
            except ValueError as exc:
                raise ValueError(f"versions.{name}: {exc}") from None
        return found

    @property
    def default_version(self) -> str:
        """The version serving the tier's traffic unless a rollout says otherwise: the tier's own, else
        the first listed (the order of `all_versions`, without validating every version again)."""
        return self.version if self.model_source else next(iter(self.versions))

    @model_validator(mode="after")
    def _slots_fit_a_replica(self) -> TierConfig:
        options = self.deployment
        if self.dispatch_timeout_s is not None and self.initial_replicas == 0:
            raise ValueError("a tier that scales to zero waits for a replica to start: set dispatch_timeout_s: null")
        if self.dispatch_timeout_s is not None and self.concurrency_slots > options.max_ongoing_requests:
            raise ValueError(
                f"concurrency_slots ({self.concurrency_slots} per replica) exceeds what a replica takes at once "
                f"(max_ongoing_requests {options.max_ongoing_requests}): requests would queue in Ray Serve while "
                f"the router counts a free slot, and time out as if no replica were alive")
        return self

    @property
    def initial_replicas(self) -> int:
        """Replicas the tier starts with (and the router assumes until it sees the running count)."""
        options = self.deployment
        if options.num_replicas is not None:
            return options.num_replicas
        autoscaling = options.autoscaling_config or {}
        return autoscaling.get("initial_replicas", autoscaling.get("min_replicas", 1))

    @field_validator("engine_kwargs")
    @classmethod
    def _model_is_not_an_engine_kwarg(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "model" in value:
            raise ValueError("give the model as model_source, not engine_kwargs.model")
        return value

    @property
    def price(self) -> Price:
        return Price(usd_per_replica_hour=self.usd_per_replica_hour)

    @property
    def from_s3(self) -> bool:
        return self.model_source.startswith("s3://")

    def resolved_model(self) -> str:
        if self.model_source.startswith("./"):
            return str(PROJECT_ROOT / self.model_source[2:])
        return self.model_source

    def replica_options(self) -> dict[str, Any]:
        """Deployment options with `env_vars` merged into the replica's runtime_env."""
        options = self.deployment.serve_options()
        actor = dict(options.get("ray_actor_options", {}))
        runtime_env = dict(actor.get("runtime_env", {}))
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **self.env_vars}
        actor["runtime_env"] = runtime_env
        options["ray_actor_options"] = actor
        return options


class ExternalConfig(BackendLimits):
    """An OpenAI-compatible API (OpenAI, a hosted provider, another vLLM) used as a fallback step."""

    base_url: str
    """API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8100/v1."""
    model: str
    """The provider's model name."""
    api_key_env: str | None = None
    """Environment variable holding the provider's key (the key itself never goes in this file)."""
    usd_per_million_input_tokens: float = Field(0.0, ge=0)
    """The provider's price for prompt tokens."""
    usd_per_million_output_tokens: float = Field(0.0, ge=0)
    """The provider's price for generated tokens."""
    forward_extra_sampling: bool = True
    """Send vLLM-only sampling options (top_k, repetition_penalty, ...) in the request body; turn
    off for providers that reject unknown fields."""

    @property
    def price(self) -> Price:
        return Price(usd_per_million_input_tokens=self.usd_per_million_input_tokens,
                     usd_per_million_output_tokens=self.usd_per_million_output_tokens)


class CascadeConfig(StrictModel):
    """The `auto` route: answer with the cheap tier, escalate to the strong one when unsure."""

    cheap_tier: str = "cheap"
    """Tier that answers first."""
    strong_tier: str = "strong"
    """Tier that answers when the cheap answer's confidence is below `threshold`."""
    scorer: str = "mean_prob"
    """Confidence scorer, one of serve_app.routing.scorers.SCORERS."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Escalate when the cheap answer's confidence is below this."""

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str) -> str:
        if value not in SCORERS:
            raise ValueError(f"unknown scorer {value!r}; choose one of {sorted(SCORERS)}")
        return value


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


class RouterConfig(StrictModel):
    """The ingress and router deployment."""

    default_max_tokens: PositiveInt | None = None
    """Chat completions without max_tokens generate up to this many tokens (null: to the end of the
    context window, as vLLM does). Completions keep OpenAI's default of 16."""
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(max_ongoing_requests=256))
    """Ray Serve options of the router deployment."""
    replica_poll_s: float = Field(10.0, gt=0)
    """How often the router reads each tier's running replicas (its capacity) from the Serve controller.
    Each read makes the controller build every deployment's details, so it is not free: replicas take
    tens of seconds to start, and a lost one is caught per request by the dispatch timeout meanwhile."""
    rollout_sync_s: float = Field(2.0, gt=0)
    """How often a router replica reads the canary rollbacks other replicas decided (while a canary runs)."""


class ResilienceConfig(StrictModel):
    """What the router does when a backend fails: fallback chains and circuit breakers."""

    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    """Per route, the routes to try in order when its own backend fails server-side (errors, timeouts,
    open circuit), e.g. {strong: [cheap]}. Client errors (4xx) never fall back."""
    breaker_failure_threshold: PositiveInt = 5
    """Failures within breaker_window_s that open a tier's circuit."""
    breaker_window_s: float = Field(30.0, gt=0)
    """The window over which failures are counted."""
    breaker_cooldown_s: float = Field(15.0, gt=0)
    """How long an open circuit fails fast before one probe request is let through."""
    retry_attempts: PositiveInt = 2
    """Tries per backend (1: no retry) for retryable failures (a dead replica, an engine error),
    only before the first byte reached the client; never for overload, open circuits or timeouts."""
    retry_initial_backoff_s: float = Field(0.1, gt=0)
    """First backoff; doubling with jitter after each failed try."""
    retry_max_backoff_s: float = Field(2.0, gt=0)
    """Longest single backoff."""
    retry_deadline_s: float = Field(10.0, gt=0)
    """No new try starts later than this after the first."""
    answer_cache_max_entries: int = Field(1024, ge=0)
    """Recent successful answers kept (0: no cache), served only when every backend failed."""
    answer_cache_max_age_s: float = Field(600.0, gt=0)
    """Cached answers older than this are never served."""
    shed_ttft_target_s: float | None = Field(None, gt=0)
    """Reject (503 + Retry-After) a request whose expected time to first token on its tier exceeds
    this, scaled by priority (x-priority: low 0.5x, normal 1x, high 2x); null: never shed."""


class AccessConfig(StrictModel):
    """Who may call the API and how often. Keys never live in this file: only where to find them."""

    api_keys_env: str | None = "SERVE_APP_API_KEYS"
    """Environment variable holding comma-separated API keys; unset or empty means no keys from it."""
    api_keys_file: str | None = None
    """A secrets file with one API key per line (e.g. a mounted Kubernetes secret)."""
    require_api_keys: bool = False
    """Refuse to start when no key is found, instead of serving without authentication."""
    requests_per_minute_per_key: float | None = Field(None, gt=0)
    """Sustained request rate allowed per key (per router replica); null: unlimited."""
    burst_per_key: PositiveInt | None = None
    """Requests a key may send at once above the sustained rate; defaults to one minute's worth."""
    max_body_bytes: PositiveInt = 1_048_576
    """Largest request body accepted (413 beyond it)."""


class ModelStoreConfig(StrictModel):
    """How replicas fetch `s3://` model sources into their node's cache (serve_app.models.store). The
    endpoint, region and credentials are boto3's own (AWS_ENDPOINT_URL_S3, AWS_PROFILE, roles, ...)."""

    cache_dir: str = "/tmp/serve_app/models"
    """Node-local cache folder; a node may override it with SERVE_APP_MODEL_CACHE_DIR in its environment."""
    max_concurrency: PositiveInt = 8
    """Concurrent ranged GETs per file."""
    chunk_size_mb: int = Field(8, ge=5)
    """Size of each ranged GET (S3 multipart parts are at least 5 MiB)."""
    max_attempts: PositiveInt = 3
    """Tries per S3 call (botocore's standard retry mode, with backoff)."""
    verify_checksums: bool = True
    """Check each file's sha256 against the manifest after download and before using a cached copy
    (sizes are always checked)."""
    warm_page_cache: bool = False
    """Read the weights once before the engine starts, so it loads them from memory."""

    def transfer(self):
        from serve_app.models.store import TransferSettings

        return TransferSettings(max_concurrency=self.max_concurrency, chunk_size_bytes=self.chunk_size_mb * 2**20,
                                max_attempts=self.max_attempts)


class TracingConfig(StrictModel):
    """OpenTelemetry traces of every request (serve_app.observability.tracing)."""

    exporter: Literal["none", "console", "otlp"] = "none"
    """Where spans go: an OTLP/HTTP collector, each replica's log, or nowhere."""
    otlp_endpoint: str | None = None
    """The collector's traces URL, e.g. http://otel-collector:4318/v1/traces; null: the standard
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables, else localhost:4318."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of new traces kept; a client's `traceparent` decides for the traces it starts."""
    export_interval_ms: PositiveInt = 5000
    """How long finished spans wait to be sent in a batch."""
    record_content: bool = False
    """Put prompts and answers on the request spans (gen_ai.input.messages / gen_ai.output.messages).
    Off by default: they may hold personal data."""


class ObservabilityConfig(StrictModel):
    """Traces (metrics are always on, through Ray's Prometheus endpoint)."""

    service_name: str = "serve_app"
    """`service.name` of the spans."""
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    """Span export."""


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


def serve_app_entry(serve_config: dict, app: str | None = None) -> dict:
    """This project's application in a Serve config (a dict as `serve deploy` reads it)."""
    for entry in serve_config.get("applications", []):
        if entry.get("import_path") == BUILDER and app in (None, entry.get("name")):
            return entry
    raise ValueError(f"no application {app or ''} with import_path {BUILDER} in the Serve config".replace("  ", " "))
