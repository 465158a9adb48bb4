"""Errors a user can cause, with the HTTP status and the request field they concern.

Every layer raises these (the wire parser, the early validation in the API, the engine), so a bad
request gets the same answer whether it is caught before the job is queued or on the worker.
Exceptions keep their constructor arguments in ``args`` so they pickle across Celery.
"""

from __future__ import annotations


class ActqError(Exception):
    """Base class: an error with an HTTP status, a short type, a message and a field path."""

    status: int = 400
    type: str = "bad_request"

    def __init__(self, message: str, path: str | None = None, status: int | None = None):
        super().__init__(message, path, status)
        self.message = message
        self.path = path
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict:
        return {"error": {"type": self.type, "message": self.message, "path": self.path}}


class RequestValidationError(ActqError):
    """The body does not parse, or a field has the wrong type or an impossible value (422)."""

    status = 422
    type = "validation_error"


class RequestError(ActqError):
    """The request is well formed but the model cannot serve it (400), e.g. a multi-token target."""

    status = 400
    type = "bad_request"


class UnsupportedError(ActqError):
    """A feature this server does not offer, e.g. autoencoder latents or neuron-record datasets."""

    status = 422
    type = "unsupported"


class NotFoundError(ActqError):
    status = 404
    type = "not_found"
