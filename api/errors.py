"""One JSON error handler for actq's errors and one for every other HTTP error.

A user error is a 4xx with ``{"error": {"type", "message", "path"}}``; a 5xx means a bug (or a
service that is down), and its details go to the log, not to the client. A database that cannot
be reached (restarting, a failover) is a 503 with ``Retry-After``, never a 500; a body over
``ACTQ_MAX_BODY_BYTES`` is a 413 that names the limit.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from models.errors import ActqError

log = logging.getLogger(__name__)

DATABASE_RETRY_AFTER = "5"
UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


def error_body(type_: str, message: str, path: str | None = None) -> dict:
    return {"error": {"type": type_, "message": message, "path": path}}


def _http_type(error: HTTPException) -> str:
    return (error.name or "error").lower().replace(" ", "_").replace("'", "")


def handle_actq_error(error: ActqError):
    return jsonify(error.to_dict()), error.status


def handle_http_error(error: HTTPException):
    response = jsonify(error_body(_http_type(error), error.description or error.name))
    response.status_code = error.code or 500
    for key, value in error.get_headers():
        if key.lower() not in ("content-type", "content-length"):
            response.headers[key] = value
    return response


def handle_too_large(_error: RequestEntityTooLarge):
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    message = f"the request body is larger than {limit} bytes (ACTQ_MAX_BODY_BYTES)"
    return jsonify(error_body("payload_too_large", message)), 413


def database_unavailable(error: Exception):
    log.warning("database unavailable: %s", error)
    response = jsonify(
        error_body("service_unavailable", "the database is unavailable; retry shortly")
    )
    response.status_code = 503
    response.headers["Retry-After"] = DATABASE_RETRY_AFTER
    return response


def handle_unexpected(error: Exception):
    if isinstance(error, UNREACHABLE) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return database_unavailable(error)
    log.exception("unhandled error: %s", error)
    return jsonify(error_body("internal_error", "internal server error")), 500


def init_app(app: Flask) -> None:
    app.register_error_handler(ActqError, handle_actq_error)
    app.register_error_handler(RequestEntityTooLarge, handle_too_large)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
