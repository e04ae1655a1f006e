#!/usr/bin/env bash
# Set up (if needed) and serve the local CPU profile on http://127.0.0.1:8000 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/serve run "${1:-configs/local-cpu.yaml}"
