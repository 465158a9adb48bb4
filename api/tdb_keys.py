"""A key in the path, for TDB's unmodified UI on a keyed service: ``/tdb/KEY/batched_tdb``.

TDB's UI sends no ``Authorization`` header and has one setting, the server URL it is built with;
so ``NEURON_VIEWER_ACTIVATION_SERVER_URL=http://host:8000/tdb/KEY`` gives it a key. A WSGI
middleware takes the key out of the path before anything else sees the request: the rest of the
path is routed as usual and the key is presented as ``Authorization: Bearer KEY`` (an explicit
header wins). The prefix opens the TDB-compatible surface only (TDB's routes and their errors);
``/tdb/KEY/v1/...`` and the HTML pages answer 404, so a key that leaks through a URL cannot read
the job history through it.

The risk: a URL is not a secret. It is in the built UI's JavaScript, in the browser's history
and developer tools, and in access logs. actq's own logs never show it: the middleware rewrites
the request line gunicorn logs (``RAW_URI``) and a filter on the access loggers replaces the key
with ``***``. Use a key made for the UI (``actq keys create tdb-ui``), revoke it when done.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, request

from api.tdb import tdb_error
from api.tdb_cors import PREFIXED, TDB_BLUEPRINTS
from models.errors import NotFoundError

PREFIX = re.compile(r"^/tdb/([^/]+)(/.*)?$")
IN_TEXT = re.compile(r"/tdb/[^/\s\"?]+")
REDACTED = "/tdb/***"
ACCESS_LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error")


def redact(text: str) -> str:
    return IN_TEXT.sub(REDACTED, text)


class KeyInPath:
    """WSGI middleware: ``/tdb/KEY/rest`` -> ``/rest`` with ``Authorization: Bearer KEY``."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        match = PREFIX.match(environ.get("PATH_INFO") or "")
        if match:
            key, rest = match.group(1), match.group(2) or "/"
            environ["PATH_INFO"] = rest
            environ.setdefault("HTTP_AUTHORIZATION", f"Bearer {key}")
            environ[PREFIXED] = True
            for name in ("RAW_URI", "REQUEST_URI"):
                if name in environ:
                    environ[name] = redact(environ[name])
        return self.app(environ, start_response)


class RedactKeys(logging.Filter):
    """Replace ``/tdb/KEY`` with ``/tdb/***`` in a log record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def only_the_tdb_surface() -> Response | None:
    """``before_request``: through the prefix, only TDB's routes (and their errors) answer."""
    if not request.environ.get(PREFIXED):
        return
    if request.url_rule is not None and request.blueprint not in TDB_BLUEPRINTS:
        return tdb_error(
            NotFoundError(
                "a key in the path opens TDB's routes only; send /v1 requests with "
                "Authorization: Bearer KEY"
            )
        )
    return None


def init_app(app: Flask) -> None:
    app.wsgi_app = KeyInPath(app.wsgi_app)
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
    app.before_request(only_the_tdb_surface)
