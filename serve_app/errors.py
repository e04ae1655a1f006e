"""Errors with HTTP meaning. Client errors are 4xx, server errors 5xx; `error_body` is the one place
an error becomes the OpenAI error envelope."""

from __future__ import annotations

from http import HTTPStatus


class ServingError(Exception):
    """Base of every error a caller may see. Picklable, so it crosses Ray Serve handles intact."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


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


class ServerError(ServingError):
    code = "internal_error"


class BackendUnavailable(ServerError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "backend_unavailable"


def error_body(error: ServingError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
