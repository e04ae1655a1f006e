"""Cascading LLM serving on Ray Serve and vLLM: pure policies, protocol and configuration.

Nothing here imports Ray or vLLM at import time; `serve_app.app:build_app` is the builder that
`serve run`, `serve build` and `serve deploy` use.
"""
