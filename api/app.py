"""The web process: ``create_app(config)`` builds the Flask app and registers the route modules.

Nothing is read at import time. ``config`` may hold a ``Settings`` under ``"ACTQ_SETTINGS"``,
field overrides for it (``{"database_url": ...}``), or plain Flask keys (upper case). Route
modules are listed in ``ROUTE_MODULES``; each has ``init_app(app)``, so a new group of routes (the
comparison pages, for example) is one more line here. The web process never imports ``worker`` or
torch: jobs reach the workers by Celery task name.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from flask import Flask

from models.settings import Settings

ROUTE_MODULES: list[str] = [
    "api.errors",
    "api.usage",
    "api.tdb_cors",  # before auth: preflights are answered before a key is asked for
    "api.tdb_order",  # before auth: a 401 or 429 keeps its place in the client's line
    "api.tdb_keys",  # /tdb/KEY/...: a key in the path for TDB's UI
    "api.database",
    "api.auth",
    "api.security",
    "api.queue",
    "api.served",
    "api.jobs",
    "api.meta",
    "api.tdb",
    "api.tdb_read",
    "api.records",
    "api.record_pages",
    "api.sweeps",
]
# Route modules that another part of the project may add later; registered when present.
OPTIONAL_ROUTE_MODULES: list[str] = ["api.runs", "api.pages", "api.sweep_pages"]


def create_app(config: dict[str, Any] | Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.config["ACTQ_SETTINGS"] = _settings(app, config)
    if app.config.get("MAX_CONTENT_LENGTH") is None:  # a Flask key in ``config`` wins
        app.config["MAX_CONTENT_LENGTH"] = app.config["ACTQ_SETTINGS"].max_body_bytes
    for name in ROUTE_MODULES:
        importlib.import_module(name).init_app(app)
    for name in OPTIONAL_ROUTE_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).init_app(app)
    logging.getLogger(__name__).debug("actq app created with %s", ROUTE_MODULES)
    return app


def _settings(app: Flask, config: dict[str, Any] | Settings | None) -> Settings:
    if isinstance(config, Settings):
        return config
    config = dict(config or {})
    settings = config.pop("ACTQ_SETTINGS", None)
    flask_keys = {k: v for k, v in config.items() if k.isupper()}
    app.config.update(flask_keys)
    overrides = {k: v for k, v in config.items() if not k.isupper()}
    if settings is not None:
        return settings.model_copy(update=overrides) if overrides else settings
    return Settings(**overrides)
