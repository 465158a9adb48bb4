"""Requests a web page in the user's browser may not make: cross-site writes and rebound hosts.

An open (keyless) service on a workstation trusts every request from the machine, and a browser
on that machine makes requests for any page it shows. So, before any route runs:

* **Host** (DNS rebinding): an open service answers only when the ``Host`` header names a
  loopback address (``localhost``, ``127.0.0.0/8``, ``[::1]``) or a host in
  ``ACTQ_ALLOWED_HOSTS``; otherwise 421. A rebinding page's requests carry its own name.
* **Origin** of a state-changing request (POST, PUT, PATCH, DELETE), open or with keys: when the
  browser says where it comes from (``Origin``, else ``Referer``), it must be the service's own
  origin, one in ``ACTQ_ALLOWED_ORIGINS``, or, for the TDB-compatible routes, TDB's localhost
  rule (``http(s)://localhost[:port]``, ``api.tdb``); otherwise 403. Clients that send neither
  (curl, ``actq``, ``api.client``) are not browsers on another site's behalf and pass.
* **Content type**: a JSON body must say ``application/json`` (415 otherwise): the one thing a
  cross-site ``fetch(..., {mode: "no-cors"})`` or a plain HTML form cannot send.
* **HTML forms** (the pages' POSTs) carry a CSRF token: the double-submit cookie
  ``actq_csrf`` (``SameSite=Strict``), written into each form by ``csrf_token()`` and compared
  with the posted field (403 otherwise). Another site can neither read the cookie nor make the
  browser send it.

CORS response headers are another matter (``api.tdb`` says who may read a response); this module
only decides whether a request is served.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, jsonify, request

from api.auth import current_caller
from api.tdb_cors import on_tdb_surface

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_BLUEPRINTS = frozenset({"pages"})  # their POSTs are HTML forms, not JSON
LOCALHOST_ORIGIN = re.compile(r"https?://localhost(:\d+)?")
CSRF_COOKIE = "actq_csrf"
CSRF_FIELD = "csrf_token"


def init_app(app: Flask) -> None:
    """Registered after ``api.auth``: the checks run once the caller is known."""
    app.before_request(refuse_nul_bytes)
    app.before_request(refuse_unsafe_request)
    app.after_request(_set_csrf_cookie)
    app.after_request(_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token


def refuse_unsafe_request() -> Response | None:
    """``before_request``: the Host, Origin, content type and CSRF checks, in that order."""
    settings = current_app.config["ACTQ_SETTINGS"]
    caller = current_caller()  # None on the paths that need no key (``api.auth.OPEN_PATHS``)
    if caller is None:
        return None
    if caller.owner is None and not host_allowed(request.host, settings.allowed_host_names()):
        return _refuse(
            421,
            "misdirected_request",
            f"this open service answers only for loopback host names, not {request.host!r} "
            "(ACTQ_ALLOWED_HOSTS)",
        )
    if request.method not in STATE_CHANGING:
        return None
    origin = request_origin()
    if origin is not None and not origin_allowed(origin, settings.allowed_origin_list()):
        return _refuse(
            403,
            "forbidden_origin",
            f"a {request.method} from {origin!r} is refused: not this service's origin "
            "(ACTQ_ALLOWED_ORIGINS)",
        )
    if request.blueprint in FORM_BLUEPRINTS:
        return _check_csrf_token()
    if _has_body() and request.mimetype != "application/json":
        return _refuse(
            415,
            "unsupported_media_type",
            "the body must be JSON sent with the header Content-Type: application/json (this "
            f"request's Content-Type is {request.mimetype or 'missing'!r})",
        )
    return None


def refuse_nul_bytes() -> Response | None:
    """A NUL character in the path or a query value is a 422 naming it: PostgreSQL cannot store
    or compare it (a psycopg DataError, once a 500), and SQLite matched it against everything."""
    if "\x00" in request.path:
        return _refuse(422, "validation_error", "the URL path contains a NUL character", "id")
    for name, value in request.args.items(multi=True):
        if "\x00" in value or "\x00" in name:
            return _refuse(422, "validation_error", "a NUL character is not allowed", name)
    return None


def host_allowed(host: str, allowed: list[str]) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def request_origin() -> str | None:
    """The origin a browser says the request comes from: ``Origin``, else ``Referer``'s."""
    origin = request.headers.get("Origin")
    if origin:
        return origin
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"
    return None


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    own = request.host_url.rstrip("/")
    if origin == own or origin in allowed:
        return True
    return on_tdb_surface() and LOCALHOST_ORIGIN.fullmatch(origin) is not None


def csrf_token() -> str:
    """The token for this browser's forms (its cookie's value, or a new one set on the reply)."""
    token = g.get("actq_csrf") or request.cookies.get(CSRF_COOKIE)
    if not token:
        token = secrets.token_urlsafe(32)
        g.actq_csrf_new = token
    g.actq_csrf = token
    return token


def _check_csrf_token() -> Response | None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    posted = request.form.get(CSRF_FIELD, "")
    if cookie and posted and hmac.compare_digest(cookie, posted):
        return None
    return _refuse(403, "csrf_failed", "the form's CSRF token is missing or wrong: reload the page")


def _set_csrf_cookie(response: Response) -> Response:
    token = g.get("actq_csrf_new")
    if token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/")
    return response


# The pages need no JavaScript: none may run, nothing may frame them, forms post only here.
PAGE_POLICY = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
    else:
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    return response


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")


def _refuse(status: int, kind: str, message: str, path: str | None = None) -> Response:
    response = jsonify({"error": {"type": kind, "message": message, "path": path}})
    response.status_code = status
    return response
