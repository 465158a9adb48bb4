"""CORS and TDB's error body on every response of the TDB-compatible surface.

TDB's UI runs on another origin (``http://localhost:PORT``) and reads ``body.message`` of an
error. A response without CORS headers is, to the browser, a network error with no status and no
body, so *every* answer the UI can receive carries them: preflights (answered ``200`` here, before
authentication, for any path of the surface, so that the request itself can then get its readable
404 or 401), answers, and errors from anywhere in the app (401 and 429 from ``api.auth``, 404 and
405 from routing, 413, 5xx from the error handlers), each error with TDB's ``{"message": ...}``
next to actq's ``error`` object.

The surface: TDB's routes (the blueprints in ``TDB_BLUEPRINTS``), any path that is not an actq
route outside ``/v1`` (an unknown path the UI asks for), and everything reached through a
per-key prefix (``api.tdb_keys``). ``/v1`` and the HTML pages are not part of it. CORS follows
TDB's rule: origins ``http(s)://localhost`` with any port, with credentials.
"""

from __future__ import annotations

import json
import re

from flask import Flask, Response, request

LOCALHOST_ORIGIN = re.compile(r"https?://localhost(:\d+)?")
PREFLIGHT_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
TDB_BLUEPRINTS = frozenset({"tdb", "tdb_read"})
PREFIXED = "actq.tdb_prefixed"  # set in the WSGI environ by api.tdb_keys
NOT_SURFACE_PREFIXES = ("/v1/", "/static/")


def on_tdb_surface() -> bool:
    if request.environ.get(PREFIXED) or request.blueprint in TDB_BLUEPRINTS:
        return True
    if request.url_rule is not None:
        return False
    path = request.path
    return path != "/v1" and not path.startswith(NOT_SURFACE_PREFIXES)


def is_preflight() -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def answer_preflight() -> Response | None:
    """``before_request``: a preflight of the surface is answered ``200 OK`` as TDB's server
    answers it (its headers come in ``add_cors``)."""
    if is_preflight() and on_tdb_surface():
        return Response("OK", status=200, mimetype="text/plain")
    return None


def allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin and LOCALHOST_ORIGIN.fullmatch(origin) else None


def add_cors(response: Response) -> Response:
    """``after_request``: CORS headers, and ``message`` in error bodies, on the surface."""
    if not on_tdb_surface():
        return response
    if response.status_code >= 400:
        with_message(response)
    origin = allowed_origin()
    if origin is None:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.vary.add("Origin")
    if is_preflight():
        response.headers["Access-Control-Allow-Methods"] = PREFLIGHT_METHODS
        response.headers["Access-Control-Max-Age"] = "600"
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            response.headers["Access-Control-Allow-Headers"] = asked
    else:
        response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After"
        if response.status_code >= 400:
            response.headers["Access-Control-Allow-Methods"] = "*"
            response.headers["Access-Control-Allow-Headers"] = "*"
    return response


def with_message(response: Response) -> None:
    """Put TDB's top-level ``message`` into a JSON error body that lacks one (in place)."""
    if response.is_streamed or response.headers.get("Content-Encoding"):
        return
    if response.mimetype != "application/json":
        text = response.get_data(as_text=True).strip() or f"HTTP {response.status_code}"
        body = {"message": text[:500], "error": {"type": "error", "message": text[:500]}}
        response.set_data(json.dumps(body))
        response.mimetype = "application/json"
        return
    body = response.get_json(silent=True)
    if not isinstance(body, dict) or "message" in body:
        return
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    body = {"message": message or f"HTTP {response.status_code}", **body}
    response.set_data(json.dumps(body, ensure_ascii=False))


def init_app(app: Flask) -> None:
    app.before_request(answer_preflight)
    app.after_request(add_cors)
