# The project's GPU image: Ray 2.60 with CUDA, vLLM's CUDA wheels and this app, with no model weights
# (replicas fetch them from the S3 model store into their node's cache). configs/kuberay-rayservice.yaml
# runs it; docs/deploy.md builds and pushes it.
#   docker build -f docker/gpu.Dockerfile -t registry.example.com/serve-app:0.1.0-gpu .
FROM rayproject/ray:2.60.0-py311-cu128

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /home/ray/app

# Dependencies first (a layer that survives code changes), from the project's own pyproject.toml:
# ray[serve] as the base image has it, and the `gpu` extra: vllm, which brings its CUDA torch.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app/__init__.py serve_app/__init__.py
COPY --chown=ray:users deployments/__init__.py deployments/__init__.py
# Pinned where they are declared: pyproject.toml (ray[serve]==2.60.0, vllm==0.32.0, ...).
# hadolint ignore=DL3013
RUN pip install ".[gpu]"

# The app: its packages, profiles and command-line tools (the model store's upload and prefetch).
COPY --chown=ray:users serve_app serve_app
COPY --chown=ray:users deployments deployments
COPY --chown=ray:users configs configs
COPY --chown=ray:users scripts scripts
RUN pip install --no-deps .

# KubeRay starts Ray in the containers itself; `serve deploy` (or the RayService's serveConfigV2) finds
# `deployments.app:build_app` on this path.
ENV PYTHONPATH=/home/ray/app
