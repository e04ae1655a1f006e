"""Cascading LLM serving on Ray Serve and vLLM: the pure part.

Everything here is plain Python that imports neither Ray, vLLM nor `deployments` (a test walks every
module to keep it so): the config tree (`config`), the engine seam (`generation`), request policy
(`routing/`), the OpenAI protocol (`api/`), traces, metrics and metering (`observability/`), the S3
model store (`models/`) and offline analysis (`analysis/`). The Ray Serve side, the app builder
`deployments.app:build_app` included, lives in `deployments/`.
"""
