#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests, then end-to-end tests that start
# a Ray cluster and the real application (two vLLM engines on the CPU). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check serve_app deployments scripts tests
exec .venv/bin/python -m pytest "$@"
