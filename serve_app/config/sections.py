"""The sections of the app's config besides its tiers: cascade, router, resilience, access, model
store, observability."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from serve_app.config.base import DeploymentOptions, StrictModel

# The names a user picks policies by. Each registry in serve_app.routing is keyed by exactly these
# (a test pins it), so config describes without importing the policies it names.
CascadeMode = Literal["confidence", "verified", "speculative"]
ScorerName = Literal["mean_prob", "min_prob", "tail_mean_prob", "learned"]
VerifierName = Literal["accepted_share", "accepted_prefix", "strong_mean_prob"]
FeatureName = Literal["mean", "min", "q10", "q25", "median", "log_length"]


class LearnedRule(StrictModel):
    """A logistic deferral rule over features of the cheap answer's log-probabilities."""

    intercept: float
    coefficients: dict[FeatureName, float] = Field(min_length=1)
    """Per feature (serve_app.routing.scorers.FEATURES), its weight."""


class AdaptiveCascade(StrictModel):
    """What `auto` runs under load, when `mode` is speculative (serve_app.routing.cascades.adaptive): per
    request, from the share of the strong tier's batch in use and its expected wait."""

    enabled: bool = True
    """Off: `auto` always runs `mode` with `draft_tokens`."""
    speculate_below: float = Field(0.125, ge=0.0, le=1.0)
    """Below this share of the strong tier's batch in use, drafts are `draft_tokens` long."""
    strong_alone_at: float = Field(0.25, gt=0.0, le=1.0)
    """From this share on (and whenever the strong tier's expected wait exceeds half the TTFT target, or
    the cheap tier's batch is full), the strong tier answers alone; in between, drafts shrink linearly
    to one token."""
    confidence_when_full: bool = False
    """With the strong tier's batch full, let the confidence cascade answer (the cheap tier, escalating
    only unsure answers) instead of queueing on the strong tier. Its answers are not the strong tier's,
    so it is the operator's choice."""

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveCascade:
        if self.speculate_below > self.strong_alone_at:
            raise ValueError("speculate_below must not exceed strong_alone_at")
        return self


class CascadeConfig(StrictModel):
    """The `auto` route: answer with the cheap tier, escalate to the strong one when unsure."""

    cheap_tier: str = "cheap"
    """Tier that answers first."""
    strong_tier: str = "strong"
    """Tier that answers when the cheap answer's confidence is below `threshold`."""
    scorer: ScorerName = "mean_prob"
    """Confidence scorer (serve_app.routing.scorers.SCORERS); `learned` needs `learned`."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Escalate when the cheap answer's confidence (or, in `verified` mode, its verifier's score) is below this."""
    mode: CascadeMode = "confidence"
    """`confidence`: the cheap tier answers in full, and its answer is served or escalated by `scorer`
    and `threshold`. `verified`: the same, judged by `verifier` on the strong tier's verdict on the cheap
    answer (one prefill of the strong tier). `speculative`: the cheap tier drafts blocks of `draft_tokens`
    that the strong tier verifies as they stream (serve_app.routing.speculative); both tiers must share a
    tokenizer."""
    verifier: VerifierName = "accepted_share"
    """Verified mode: the verifier (serve_app.routing.scorers.VERIFIERS)."""
    draft_tokens: int = Field(4, ge=1, le=64)
    """Speculative mode: tokens the cheap tier drafts per verification pass of the strong tier (at most)."""
    draft_stop_prob: float = Field(0.0, ge=0.0, lt=1.0)
    """Speculative mode: the cheap tier ends a draft after the first token it samples with a (raw)
    probability below this, where the strong tier likely rejects it: the cheap tier drafts fewer tokens
    and the strong tier scores fewer that it would throw away, but a doubted token the strong tier keeps
    now ends a round, so there are more passes (an A/B in docs/cascade.md). 0 drafts whole blocks of
    `draft_tokens`."""
    alpha: float = Field(0.0, ge=0.0, lt=1.0)
    """Speculative mode: keep a drafted token v while p_strong(v) >= (1 - alpha) * max p_strong; 0 keeps
    only the strong model's own choices (its greedy answer at temperature 0), larger keeps more drafts.
    Verified mode: the same rule, for the verifiers that count kept tokens."""
    adaptive: AdaptiveCascade = Field(default_factory=AdaptiveCascade)
    """Speculative mode: what `auto` runs under load (fewer drafts, the strong tier alone)."""
    allow_request_overrides: bool = False
    """Let a request set its own mode, scorer, verifier, threshold, alpha, draft_tokens and draft_stop_prob
    (the `cascade` field of its body, an extension): for evaluations and A/B tests on one deployment. With
    it on, the speculative mode's tokenizer check applies at start whatever `mode` is."""

    learned: LearnedRule | None = None
    """The fitted rule of the `learned` scorer (scripts/calibrate_cascade.py --learn writes it)."""

    @model_validator(mode="after")
    def _learned_rule_given(self) -> CascadeConfig:
        if self.scorer == "learned" and self.learned is None:
            raise ValueError("scorer learned needs cascade.learned (scripts/calibrate_cascade.py --learn writes it)")
        return self


class RouterConfig(StrictModel):
    """The ingress and router deployment."""

    default_max_tokens: PositiveInt | None = None
    """Chat completions without max_tokens generate up to this many tokens (null: to the end of the
    context window, as vLLM does). Completions keep OpenAI's default of 16."""
    stream_interval_ms: float = Field(100.0, ge=0, le=1000)
    """A streamed answer's pace on both hops (engine replica to router, router to client): at most one
    message per interval, holding every token ready by then, in order; the first token is sent at once.
    0: one message per engine step. A request may set its own (`stream_interval_ms` in the body)."""
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(max_ongoing_requests=256))
    """Ray Serve options of the router deployment."""


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
    export_timeout_s: float | None = Field(None, gt=0)
    """How long one batch may take to reach the collector, retries included, before it is dropped; null:
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT / OTEL_EXPORTER_OTLP_TIMEOUT, else the SDK's 10 s."""
    record_content: bool = False
    """Put prompts and answers on the request spans (gen_ai.input.messages / gen_ai.output.messages).
    Off by default: they may hold personal data."""


class ObservabilityConfig(StrictModel):
    """Traces (metrics are always on, through Ray's Prometheus endpoint)."""

    tracing: TracingConfig = Field(default_factory=TracingConfig)
    """Span export."""
