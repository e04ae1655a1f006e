"""A minimal OTLP/HTTP trace receiver on 127.0.0.1 that prints traces as trees.

    .venv/bin/python -m scripts.otlp_receiver [--port 4318]

For looking at traces without a collector: deploy with `observability.tracing.exporter: otlp` (its
default endpoint is localhost:4318), send requests, and each trace is printed once it has been quiet
for a few seconds. The end-to-end tests use the same receiver (scripts.harness.spans).
"""

from __future__ import annotations

import argparse
import time

from scripts.harness.spans import SpanCollector, format_tree


def main() -> None:
    parser = argparse.ArgumentParser(description="Receive OTLP/HTTP traces and print them as trees.")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--quiet-s", type=float, default=3.0, help="print a trace once no span came for this long")
    args = parser.parse_args()
    collector = SpanCollector(args.port)
    print(f"listening on {collector.endpoint}", flush=True)
    printed: set[str] = set()
    try:
        while True:
            time.sleep(0.5)
            for trace_id in collector.trace_ids():
                spans = collector.trace(trace_id)
                if trace_id not in printed and time.monotonic() - max(s.received_s for s in spans) > args.quiet_s:
                    print(format_tree(spans), flush=True)
                    printed.add(trace_id)
    except KeyboardInterrupt:
        collector.close()


if __name__ == "__main__":
    main()
