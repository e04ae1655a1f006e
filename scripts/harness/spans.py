"""A minimal OTLP/HTTP trace receiver on 127.0.0.1 that keeps spans in memory (`SpanCollector`) and
formats a trace as a tree. The end-to-end tests point every process of their stack at one;
`scripts/otlp_receiver.py` prints what it receives."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict
    status_code: int
    service: str
    start_ns: int = 0
    end_ns: int = 0
    received_s: float = field(default_factory=time.monotonic)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class SpanCollector:
    def __init__(self, port: int = 0):
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector._receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _receive(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.kind,
                        {a.key: _value(a.value) for a in span.attributes}, span.status.code,
                        resource.get("service.name", ""), span.start_time_unix_nano, span.end_time_unix_nano,
                    ))
        with self._lock:
            self._spans.extend(received)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if s.trace_id == trace_id]

    def trace_ids(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(s.trace_id for s in self._spans))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


KIND = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def format_tree(spans: list[ReceivedSpan], attributes: bool = True) -> str:
    """One trace as an indented tree, children in start order, with durations and attributes."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for s in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(s.parent_span_id if s.parent_span_id in ids else "", []).append(s)
    t0 = min(s.start_ns for s in spans)
    lines = [f"trace {spans[0].trace_id}"]

    def walk(parent: str, depth: int) -> None:
        for s in children.get(parent, []):
            status = " ERROR" if s.status_code == 2 else ""
            lines.append(f"{'  ' * depth}- {s.name} [{KIND.get(s.kind, s.kind)}]{status} "
                         f"+{(s.start_ns - t0) / 1e6:.0f} ms, {(s.end_ns - s.start_ns) / 1e6:.0f} ms")
            if attributes:
                for key, value in sorted(s.attributes.items()):
                    shown = f"{value:.6g}" if isinstance(value, float) else value
                    lines.append(f"{'  ' * depth}    {key} = {shown}")
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
