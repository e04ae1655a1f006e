"""OpenTelemetry traces: one trace per request, ingress -> each attempt at a backend -> the engine.

Code that routes and serves uses only the OpenTelemetry API (a no-op until a process configures the
SDK with `configure`). The trace context crosses Ray Serve calls as a W3C carrier dict inside the
`GenerationRequest`, and comes in from clients as the `traceparent` header. Span names and
attributes follow the OpenTelemetry GenAI semantic conventions (`{operation} {model}`,
`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...); the project's own live under `serve_app.`.
Prompts and answers are recorded only when the config says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from serve_app.config import TracingConfig
from serve_app.core.ledger import Attempt, Ledger

_SCOPE = "serve_app"


def _otlp_exporter(config: TracingConfig):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # None: the OTEL_EXPORTER_OTLP_* variables, else localhost:4318 and 10 s
    return OTLPSpanExporter(endpoint=config.otlp_endpoint, timeout=config.export_timeout_s)


def _console_exporter(config: TracingConfig):
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


EXPORTERS: dict[str, Callable[[TracingConfig], Any]] = {"otlp": _otlp_exporter, "console": _console_exporter}
"""Span exporters by the name `observability.tracing.exporter` gives ("none" configures nothing)."""


SERVICE_NAME = "serve_app"
"""`service.name` of every span the app exports."""


def configure(config: TracingConfig) -> None:
    """Install this process's tracer provider (once per process: a Ray Serve replica is one)."""
    if config.exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(EXPORTERS[config.exporter](config),
                                                   schedule_delay_millis=config.export_interval_ms))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(_SCOPE)


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The caller's context from W3C headers (`traceparent`, `tracestate`); empty when there are none."""
    return propagate.extract(dict(carrier or {}))


def carrier(span: Span) -> dict[str, str]:
    """W3C headers that make `span` the parent of spans in another process."""
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers


def _set(span: Span, attributes: Mapping[str, Any]) -> None:
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def _fail(span: Span, code: str | None, message: str = "") -> None:
    if code is not None:
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, message or code))


# The request (ingress) span ---------------------------------------------------------------------

def start_request(operation: str, model: str, parent: Context, content: Any, sampling: Mapping[str, Any]) -> Span:
    """`operation` is the GenAI operation name: `chat` or `text_completion`. `content` (the prompt or
    messages) is recorded unless None, which the caller passes unless the config allows it."""
    span = tracer().start_span(f"{operation} {model}", context=parent, kind=SpanKind.SERVER)
    _set(span, {
        "gen_ai.operation.name": operation, "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": sampling.get("max_tokens"), "gen_ai.request.temperature": sampling.get("temperature"),
        "gen_ai.request.top_p": sampling.get("top_p"), "gen_ai.request.seed": sampling.get("seed"),
        "gen_ai.input.messages": None if content is None else json.dumps(content),
    })
    return span


def end_request(span: Span, ledger: Ledger, output: str | None = None) -> None:
    routing = ledger.routing
    _set(span, {
        "serve_app.outcome": ledger.outcome, "serve_app.cost_usd": ledger.cost_usd,
        "serve_app.ttft_s": ledger.ttft_s, "serve_app.tpot_s": ledger.tpot_s,
        "serve_app.attempts": len(ledger.attempts),
        "gen_ai.usage.input_tokens": ledger.input_tokens if routing else None,
        "gen_ai.usage.output_tokens": ledger.output_tokens if routing else None,
        "gen_ai.response.finish_reasons": [ledger.finish_reason] if ledger.finish_reason else None,
        "gen_ai.output.messages": None if output is None else json.dumps([{"role": "assistant", "content": output}]),
    })
    if routing is not None:
        _set(span, {
            "gen_ai.response.model": routing.served_by, "serve_app.route": routing.route,
            "serve_app.served_by": routing.served_by, "serve_app.version": routing.version,
            "serve_app.escalated": routing.escalated, "serve_app.cascade.confidence": routing.confidence, "serve_app.cascade.reason": routing.reason,
            "serve_app.fallback_reason": routing.fallback_reason, "serve_app.cascade.plan": routing.plan,
            "serve_app.cascade.plan_reason": routing.plan_reason,
        })
    if ledger.error is not None:
        _fail(span, ledger.error.code, ledger.error.message)
    span.end()


# Attempt spans: one per try at a backend ----------------------------------------------------------

def start_attempt(attempt: Attempt) -> Span:
    """A child of the current span (the request's), which the router makes current while routing."""
    span = tracer().start_span(f"attempt {attempt.backend}", kind=SpanKind.CLIENT)
    _set(span, {"serve_app.backend": attempt.backend, "serve_app.attempt": attempt.number})
    return span


def end_attempt(span: Span, attempt: Attempt) -> None:
    _set(span, {
        "gen_ai.usage.input_tokens": attempt.input_tokens, "gen_ai.usage.output_tokens": attempt.output_tokens,
        "serve_app.ttft_s": attempt.ttft_s, "serve_app.replica_seconds": attempt.replica_seconds,
        "serve_app.cost_usd": attempt.cost_usd,
    })
    _fail(span, attempt.error)
    span.end()


# The engine's span, in the engine replica's process ------------------------------------------------

def start_generation(model: str, tier: str, trace_context: Mapping[str, str] | None, replica: str) -> Span:
    """An engine replica's span of one generation or scoring call, under the router's attempt span."""
    span = tracer().start_span(f"generate {model}", context=extract(trace_context), kind=SpanKind.SERVER)
    _set(span, {"gen_ai.operation.name": "generate", "gen_ai.request.model": model, "serve_app.tier": tier,
                "serve_app.replica": replica})
    return span
