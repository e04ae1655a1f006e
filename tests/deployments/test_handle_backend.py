"""A tier's handle as a router backend: what Ray raises becomes the seam's errors (imports Ray, runs none)."""

import asyncio

import pytest
from ray.serve.exceptions import BackPressureError

from deployments.router import _handle_backend
from serve_app.core.errors import BackendUnavailable, Overloaded
from serve_app.core.generation import GenerationRequest


class Response:
    def __init__(self, error):
        self.error, self.cancelled = error, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise self.error

    def cancel(self):
        self.cancelled = True


class Handle:
    """Just enough of a DeploymentHandle: `options(stream=True).generate.remote(request)`."""

    def __init__(self, error):
        self.response = Response(error)
        self.generate = self

    def options(self, stream):
        return self

    def remote(self, request):
        return self.response


async def first_chunk(handle):
    return await anext(_handle_backend("strong", handle)(GenerationRequest("r", {}, prompt="q")))


def test_full_replica_queues_are_overload_and_the_call_is_cancelled():
    handle = Handle(BackPressureError(num_queued_requests=64, max_queued_requests=64))
    with pytest.raises(Overloaded, match="at capacity") as caught:
        asyncio.run(first_chunk(handle))
    assert caught.value.retry_after_s and handle.response.cancelled


def test_a_lost_replica_is_unavailable():
    from ray.exceptions import ActorDiedError

    with pytest.raises(BackendUnavailable, match="unavailable: ActorDiedError") as caught:
        asyncio.run(first_chunk(Handle(ActorDiedError())))
    assert not isinstance(caught.value, Overloaded)


def test_a_lost_replica_over_grpc_is_unavailable_whatever_the_status():
    """In Ray Serve's throughput-optimized mode the router calls the engines over gRPC, and Serve turns
    only UNAVAILABLE into a Ray error; any other failed call is a tier that did not answer, not a crash."""
    from grpc import StatusCode
    from grpc.aio import AioRpcError, Metadata

    error = AioRpcError(StatusCode.INTERNAL, Metadata(), Metadata(), details="stream reset")
    handle = Handle(error)
    with pytest.raises(BackendUnavailable, match="unavailable: AioRpcError"):
        asyncio.run(first_chunk(handle))
    assert handle.response.cancelled
