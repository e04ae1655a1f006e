"""Prefix-aware routing across a tier's replicas: Ray Serve LLM's prefix-cache-affinity router, taught
this app's engine requests.

A tier opts in with its deployment's `request_router_config`:

    request_router_config:
      request_router_class: deployments.prefix_router:PrefixAffinityRouter
      request_router_kwargs: {imbalanced_threshold: 2}

Ray Serve runs the router in every caller of the tier (each router replica): while the replicas' queues
are within `imbalanced_threshold` of each other, a request goes to the replica whose past prompts share
the longest prefix with it (its vLLM prefix cache most likely holds those blocks), a request matching
less than `match_rate_threshold` of its text to the replica that has seen the least text; otherwise to
the shorter queue of two (Ray Serve's default). The prefix tree is one actor per deployment, shared by
every caller. Ray Serve LLM matches a request's `messages` or `prompt` attribute; a completion request
of this app carries `messages=None`, which it would take for the text and fail, and it ignores roles, so
the text it matches is `GenerationRequest.prefix_text`.
"""

from __future__ import annotations

# The public `ray.serve.llm.request_router.PrefixCacheAffinityRouter` is an empty subclass of this one,
# but its module also imports the KV-aware router and with it vLLM (seconds on a router replica's
# first request); tests/deployments/test_prefix_router.py checks that the two stay the same class.
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import PrefixCacheAffinityRouter
from ray.serve.request_router import PendingRequest

from serve_app.core.generation import GenerationRequest


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    def _extract_text_from_request(self, pending_request: PendingRequest) -> str:
        for arg in pending_request.args:
            if isinstance(arg, GenerationRequest):
                return arg.prefix_text()
        return super()._extract_text_from_request(pending_request)
