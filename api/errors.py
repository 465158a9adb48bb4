"""One JSON error handler for actq's errors and one for every other HTTP error.

A user error is a 4xx with ``{"error": {"type", "message", "path"}}``; a 5xx means a bug (or a
service that is down), and its details go to the log, not to the client.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from models.errors import ActqError

log = logging.getLogger(__name__)


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


def handle_unexpected(error: Exception):
    log.exception("unhandled error: %s", error)
    return jsonify(error_body("internal_error", "internal server error")), 500


def init_app(app: Flask) -> None:
    app.register_error_handler(ActqError, handle_actq_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
