"""Errors with HTTP meaning. Client errors are 4xx, server errors 5xx; `error_body` is the one place
an error becomes the OpenAI error envelope."""

from __future__ import annotations

import math
import re
from http import HTTPStatus


class ServingError(Exception):
    """Base of every error a caller may see. Picklable, so it crosses Ray Serve handles intact."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, param, retry_after_s)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        """When set, the caller may try again after this long: sent as Retry-After."""

    def __str__(self) -> str:
        return self.message

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ClientError(ServingError):
    status = HTTPStatus.BAD_REQUEST
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    code = "invalid_request"


class ContextLengthExceeded(ClientError):
    code = "context_length_exceeded"


class ModelNotFound(ClientError):
    status = HTTPStatus.NOT_FOUND
    code = "model_not_found"


class AuthenticationFailed(ClientError):
    status = HTTPStatus.UNAUTHORIZED
    code = "invalid_api_key"


class PayloadTooLarge(ClientError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


class RateLimited(ClientError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServerError(ServingError):
    code = "internal_error"


class BackendUnavailable(ServerError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "backend_unavailable"


class CircuitOpen(BackendUnavailable):
    code = "circuit_open"


class NoLiveReplica(BackendUnavailable):
    """No replica took the request while the tier had room: its replicas died or are starting."""

    code = "no_live_replica"


class TierStarting(BackendUnavailable):
    """The tier has no running replica (its first is starting, or Ray Serve is replacing a lost one): refused
    at once with a Retry-After from its expected start, and not a fault of the tier."""

    code = "tier_starting"


class Overloaded(BackendUnavailable):
    """Shed before any work started: the expected wait would break the TTFT target."""

    code = "overloaded"


class BackendTimeout(ServerError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "timeout"


def error_body(error: ServingError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def invalid_request(errors: list[dict]) -> InvalidRequest:
    """A pydantic validation failure as the OpenAI error: the first problem, with its field as `param`."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.")
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    message = str(first.get("msg")).removeprefix("Value error, ")
    if param is None and (named := re.match(r"([\w.\[\]-]+): ", message)):  # a whole-request check names its field
        param = named.group(1)
    if param is not None and not message.startswith(f"{param}:"):
        message = f"{param}: {message}"
    return InvalidRequest(message, param=param)
