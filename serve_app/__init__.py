"""Cascading LLM serving on Ray Serve and vLLM: the pure part.

Everything here is plain Python that imports neither Ray, vLLM nor `deployments` (a test walks every
module to keep it so), in layers whose imports run one way, bottom up (tests/test_layout.py):

- `core/`: the value types every layer passes (the engine seam's requests and chunks, routed streams,
  the request's ledger, errors);
- `config/`: the one config tree, which describes and builds nothing;
- `api/` (the OpenAI protocol), `observability/` (traces, metering), `models/` (the S3 model store);
- `routing/`: request policy, built from the config;
- `ingress/` (request handling, on top) and `analysis/` (offline arithmetic, off the request path).

The Ray Serve side, the app builder `deployments.app:build_app` included, lives in `deployments/`.
"""
