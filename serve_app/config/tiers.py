"""A backend's config: an engine tier (and its versions) or an external OpenAI-compatible API.

A tier reads as five sections: which `model`, how its `engine` runs, its Ray Serve `deployment`, the
router's `limits` for it, and its `price`. A version of a tier is the tier with some of those
replaced, merged section by section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from serve_app.config.base import VERSION_NAME, DeploymentOptions, StrictModel, merged, under_project


class ModelConfig(StrictModel):
    """The weights a tier serves."""

    source: str
    """A local folder (absolute, or starting with ./ relative to the project root), an s3://bucket/prefix
    uploaded by scripts/model_store.py (fetched into each node's cache, see `model_store`), or a hub id."""
    served_name: str | None = None
    """Name of the underlying model reported by the engine (/v1/models `root`); defaults to `source`."""

    @property
    def from_s3(self) -> bool:
        return self.source.startswith("s3://")

    def resolved(self) -> str:
        """The source with a ./ path made absolute under the project root."""
        return under_project(self.source)


class SyntheticEngineConfig(StrictModel):
    """A synthetic engine (deployments.synthetic): deterministic tokens at a set pace, no model compute. For
    capacity benchmarks of the router and the stream path at GPU-like token rates, and plumbing tests."""

    tokens_per_s: float = Field(50.0, gt=0)
    """Each running request's decode rate (one engine step emits a token for every request in the batch)."""
    batch: PositiveInt = 256
    """Requests decoded at once; later ones wait in the engine's queue."""
    prefill_s: float = Field(0.02, ge=0)
    """Time from a request's admission to the batch to its first token (and of a scoring pass)."""
    answer_tokens: PositiveInt = 64
    """Length of an answer without max_tokens (it then ends with `stop`, as at an end-of-sequence token)."""
    max_model_len: PositiveInt = 4096


class EngineConfig(StrictModel):
    """How each replica of a tier runs its engine."""

    kind: Literal["vllm", "synthetic"] = "vllm"
    """vllm: vLLM's AsyncLLM serving `model`; synthetic: the synthetic engine (`synthetic`), whose `model` is
    only a name."""
    synthetic: SyntheticEngineConfig = Field(default_factory=SyntheticEngineConfig)
    """The synthetic engine's pace, with kind synthetic."""
    args: dict[str, Any] = Field(default_factory=dict)
    """vLLM `AsyncEngineArgs` fields (dtype, max_model_len, enable_prefix_caching, quantization,
    tensor_parallel_size, speculative_config, ...), passed through unchanged and checked against
    vLLM's own field list when the replica starts."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment of the replica (e.g. VLLM_CPU_KVCACHE_SPACE), merged into its runtime_env."""
    warm_up_tokens: int = Field(16, ge=0)
    """Before a replica takes traffic, it generates this many tokens for each of a full batch
    (`limits.concurrency_slots`) of short distinct prompts: the first live requests do not pay for cold
    kernels, and the router takes the batch's TTFT and TPOT as the tier's speed until live requests
    teach better (without them a tier starts in slow start). 0: no warm-up."""
    peak_memory_bandwidth_gb_s: float | None = Field(None, gt=0)
    """The replica's accelerator memory bandwidth, for MBU (e.g. 3350 for an H100 SXM); null: probed on
    the replica's CPU when it starts, which is right only for a CPU engine."""
    peak_tflops: float | None = Field(None, gt=0)
    """Dense TFLOP/s at the engine's dtype, for MFU (e.g. 989 for an H100 SXM in bf16); null: probed."""
    chat_template: str | None = None
    """A Jinja chat template file (absolute, or starting with ./ relative to the project root) used instead of
    the model's own, e.g. one that renders `tools` and tool calls for a model whose own template has none."""
    tool_call_parser: str | None = None
    """vLLM's tool parser for this model's tool-call format (hermes, llama3_json, mistral, ...; vLLM's
    `--tool-call-parser`). Without one, requests with `tools` to this tier are refused with a 400."""

    def chat_template_text(self) -> str | None:
        return None if self.chat_template is None else Path(under_project(self.chat_template)).read_text()

    @field_validator("args")
    @classmethod
    def _model_is_not_an_engine_arg(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "model" in value:
            raise ValueError("give the model as model.source, not engine.args.model")
        return value


class BackendLimits(StrictModel):
    """How the router treats one backend (an engine tier or an external API)."""

    first_token_timeout_s: float = Field(60.0, gt=0)
    """The router gives up on this backend (and falls back) when its first token takes longer."""
    total_timeout_s: float = Field(600.0, gt=0)
    """The router abandons a generation on this backend that runs longer than this in all."""
    concurrency_slots: PositiveInt = 32
    """The most requests the router admits to this backend at once, running and queued: the upper bound
    (and start) of its adaptive admission limit (serve_app.routing.admission). Within it, what is admitted
    follows measured capacity: a request is admitted while its expected time to first token fits the
    TTFT target. For an engine tier, per replica, times the replicas running at the moment (autoscaling, a
    replica lost), and its batch is the engine's (`engine_batch`); for an external API, in all, and its
    batch too."""


class TierLimits(BackendLimits):
    """How the router treats an engine tier."""

    dispatch_timeout_s: float | None = Field(5.0, gt=0)
    """While the tier has a free slot, how long a request may wait for a replica to take it (an engine
    acknowledges at once) before the tier counts as having no live replica (it died, its replacement
    is starting) and the request falls back. Null: only the first-token timeout applies."""
    expected_start_s: float = Field(120.0, gt=0)
    """How long a new replica of this tier takes to start and take traffic (weights, engine start, warm-up;
    72 s to a first answer on the local CPU profile, docs/results/startup.json). While the tier has no
    running replica (its first starting, a lost one being replaced), the router refuses its requests at
    once with a Retry-After from it, and a tier that scales from zero waits this much longer for its
    first token."""


class PriceConfig(StrictModel):
    """What a backend costs (serve_app.observability.metering prices every request from it)."""

    usd_per_replica_hour: float = Field(0.0, ge=0)
    """What one engine replica costs per hour (its GPU or CPU share of a node); prices each request by
    the replica-seconds it held."""
    usd_per_million_input_tokens: float = Field(0.0, ge=0)
    """A per-token price for prompt tokens (an API's)."""
    usd_per_million_output_tokens: float = Field(0.0, ge=0)
    """A per-token price for generated tokens (an API's)."""


class TierConfig(StrictModel):
    """One model tier: one vLLM engine deployment per version of its model."""

    model: ModelConfig | None = None
    """The weights. Null when every version is listed under `versions` with its own."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """vLLM's engine arguments and the replica's environment."""
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    """Ray Serve options of this tier's engine deployment."""
    limits: TierLimits = Field(default_factory=TierLimits)
    """Timeouts and concurrency, as the router applies them."""
    price: PriceConfig = Field(default_factory=PriceConfig)
    """What a replica costs."""
    version: str = Field("v1", pattern=VERSION_NAME)
    """Name of the version the tier's own sections describe; its engine deployment is llm-<tier>-<version>."""
    versions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """More versions deployed beside it (canary, shadow, blue/green; see `rollouts`), by name: each is
    this tier with the sections given merged over the tier's, key by key, e.g.
    {v2: {model: {source: s3://models/strong/v2}}}. Adding or removing one changes the app's args, so Ray
    Serve restarts every replica of the app (see `max_surge_percent`); moving traffic does not."""

    @model_validator(mode="after")
    def _versions_are_tiers(self) -> TierConfig:
        if self.versions:
            self.all_versions()  # each version validates as a whole tier, naming its field on error
        elif self.model is None:
            raise ValueError("model is required (or list the tier's versions under `versions`)")
        return self

    @model_validator(mode="after")
    def _slots_fit_a_replica(self) -> TierConfig:
        limits, options = self.limits, self.deployment
        if limits.dispatch_timeout_s is not None and self.initial_replicas == 0:
            raise ValueError("a tier that scales to zero waits for a replica to start: set limits.dispatch_timeout_s: null")
        queue = options.max_queued_requests
        if queue >= 0 and limits.concurrency_slots > options.max_ongoing_requests + queue:
            raise ValueError(
                f"limits.concurrency_slots ({limits.concurrency_slots} per replica) exceeds what Ray Serve holds "
                f"(deployment.max_ongoing_requests {options.max_ongoing_requests} + max_queued_requests {queue}): "
                f"admitted requests would be refused by Ray Serve")
        return self

    @property
    def engine_batch(self) -> int:
        """Requests one replica's engine runs at once: Ray Serve's `max_ongoing_requests`, at most vLLM's
        `max_num_seqs` or the synthetic engine's `batch` (Ray Serve queues the rest in the caller's handle,
        the engine in its scheduler)."""
        engine_batch = self.engine.synthetic.batch if self.engine.kind == "synthetic" else self.engine.args.get("max_num_seqs")
        return min(self.deployment.max_ongoing_requests, engine_batch or 1 << 30)

    def all_versions(self) -> dict[str, TierConfig]:
        """Every version deployed, by name: the tier's own (when it names a model) first."""
        base = self.model_dump(exclude={"versions", "version"}, exclude_unset=True)
        found = {self.version: self.model_copy(update={"versions": {}})} if self.model else {}
        for name, override in self.versions.items():
            if name in found:
                raise ValueError(f"versions: {name!r} is already the tier's own version")
            if "versions" in override:
                raise ValueError(f"versions.{name}: a version cannot list versions")
            try:
                found[name] = TierConfig.model_validate({**merged(base, override), "version": name})
            except ValueError as exc:
                raise ValueError(f"versions.{name}: {exc}") from None
        return found

    @property
    def default_version(self) -> str:
        """The version serving the tier's traffic unless a rollout says otherwise: the tier's own, else
        the first listed (the order of `all_versions`, without validating every version again)."""
        return self.version if self.model else next(iter(self.versions))

    @property
    def initial_replicas(self) -> int:
        """Replicas the tier starts with (and the router assumes until it sees the running count)."""
        options = self.deployment
        if options.num_replicas is not None:
            return options.num_replicas
        autoscaling = options.autoscaling_config or {}
        return autoscaling.get("initial_replicas", autoscaling.get("min_replicas", 1))

    @property
    def scales_to_zero(self) -> bool:
        """Autoscaling may take the tier to no replica: a request then waits for Ray Serve to start one."""
        options = self.deployment
        return options.num_replicas is None and (options.autoscaling_config or {}).get("min_replicas", 1) == 0

    def replica_options(self) -> dict[str, Any]:
        """Deployment options with the engine's `env_vars` merged into the replica's runtime_env."""
        options = self.deployment.serve_options()
        actor = dict(options.get("ray_actor_options", {}))
        runtime_env = dict(actor.get("runtime_env", {}))
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **self.engine.env_vars}
        actor["runtime_env"] = runtime_env
        options["ray_actor_options"] = actor
        return options


class ExternalConfig(StrictModel):
    """An OpenAI-compatible API (OpenAI, a hosted provider, another vLLM) used as a fallback step."""

    base_url: str
    """API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8100/v1."""
    model: str
    """The provider's model name."""
    api_key_env: str | None = None
    """Environment variable holding the provider's key (the key itself never goes in this file)."""
    forward_extra_sampling: bool = True
    """Send vLLM-only sampling options (top_k, repetition_penalty, ...) in the request body; turn
    off for providers that reject unknown fields (OpenAI's own API does)."""
    limits: BackendLimits = Field(default_factory=BackendLimits)
    """Timeouts and concurrency, as the router applies them (`concurrency_slots` in all)."""
    price: PriceConfig = Field(default_factory=PriceConfig)
    """The provider's prices per token."""
