"""API keys on every request, and the rule that each caller sees only what its key made.

``Authorization: Bearer KEY`` names the caller (a browser, for the HTML pages, may send the key as
the password of HTTP Basic authentication, which it asks for on a 401). The key's name is the
owner of the jobs it submits (``models.store.keys``). Visibility is enforced in the queries, not in the views: every ORM ``SELECT``
made through the app's sessions gets ``Job.owner = <caller>`` on jobs and the same condition (on
the run's job) on runs (SQLAlchemy's ``with_loader_criteria``, added in a ``do_orm_execute`` hook),
so the job, run, history, comparison and page routes all see only the caller's rows; another
owner's job answers 404, as if it did not exist. An admin key sees every owner's rows.

With no active key the service is open: no key is asked for and every caller sees everything,
which is why ``actq api`` and ``actq up`` then bind the loopback interface only (``safe_bind``),
and why an open service refuses clients that are not on this machine (if the last key is revoked
while the API listens on a public address, it does not become public).
``/healthz`` and ``/openapi.json`` never need a key. Every keyed request passes its key's rate
limit (``api.ratelimit``) first; an open service (local clients only) has none.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from sqlalchemy import event, exists
from sqlalchemy.orm import ORMExecuteState, with_loader_criteria

from api.database import get_session
from api.errors import error_body
from api.ratelimit import make_buckets, retry_after
from models.settings import Settings
from models.store.keys import any_active_key, find_key
from models.store.tables import Job, Run

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})


@dataclass(frozen=True)
class Caller:
    owner: str | None  # the key's name; None when the service is open
    admin: bool  # sees every owner's rows (an admin key, or anyone when the service is open)
    bucket: str  # rate-limit bucket: the key's id
    rate_per_minute: float | None = None  # the key's own rate, if it has one (0: none)


def init_app(app: Flask) -> None:
    app.extensions["actq.buckets"] = make_buckets(app.config["ACTQ_SETTINGS"].broker())
    event.listen(app.extensions["actq.sessionmaker"], "do_orm_execute", only_visible_rows)
    app.before_request(authenticate)


def current_caller() -> Caller | None:
    return g.get("actq_caller") if has_request_context() else None


def current_owner() -> str | None:
    """The owner to record on a new job: the caller's key name (None when open)."""
    caller = current_caller()
    return caller.owner if caller else None


def _reply(status: int, type_: str, message: str, headers: dict[str, str]) -> Response:
    response = jsonify(error_body(type_, message))
    response.status_code = status
    for name, value in headers.items():
        if name == "WWW-Authenticate":
            for challenge in CHALLENGES:
                response.headers.add(name, challenge)
        else:
            response.headers[name] = value
    return response


# Two challenges, two headers: browsers (Chromium) do not read a Basic challenge that follows
# another in the same header, and then cannot show their login.
CHALLENGES = ('Bearer realm="actq"', 'Basic realm="actq"')


def _presented_key() -> str | None:
    """The key of ``Authorization: Bearer KEY``, or the password of ``Basic`` (for browsers)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    if scheme.lower() == "basic" and request.authorization is not None:
        return request.authorization.password or None
    return None


def identify() -> Caller | Response:
    """The caller of this request, or the 401 to answer."""
    token = _presented_key()
    session = get_session()
    if token is None:
        if any_active_key(session):
            return _reply(
                401,
                "unauthorized",
                "this service needs an API key: send Authorization: Bearer KEY",
                {"WWW-Authenticate": "challenges"},
            )
        if not open_to(request.remote_addr or ""):
            return _reply(
                401,
                "unauthorized",
                "no API keys are configured, so this service answers local clients only",
                {"WWW-Authenticate": "challenges"},
            )
        return Caller(owner=None, admin=True, bucket="", rate_per_minute=0.0)  # no limit
    key = find_key(session, token)
    if key is None:
        return _reply(
            401, "unauthorized", "unknown or revoked API key", {"WWW-Authenticate": "challenges"}
        )
    return Caller(key.name, key.admin, f"key:{key.id}", key.rate_per_minute)


def open_to(address: str) -> bool:
    """Whether an open service (no keys) answers this client: loopback only, unless allowed."""
    return is_loopback(address) or current_app.config["ACTQ_SETTINGS"].allow_open_bind


def authenticate() -> Response | None:
    """``before_request``: identify the caller, then apply its rate limit."""
    if request.path in OPEN_PATHS or request.method == "OPTIONS":
        return None
    caller = identify()
    if isinstance(caller, Response):
        return caller
    g.actq_caller = caller
    return rate_limited(caller, current_app.config["ACTQ_SETTINGS"])


def rate_limited(caller: Caller, settings: Settings) -> Response | None:
    per_minute = (
        settings.rate_per_minute if caller.rate_per_minute is None else caller.rate_per_minute
    )
    if per_minute <= 0:
        return None
    wait = current_app.extensions["actq.buckets"].take(
        caller.bucket, per_minute / 60.0, settings.rate_burst
    )
    if wait <= 0:
        return None
    seconds = retry_after(wait)
    return _reply(
        429,
        "rate_limited",
        f"more than {per_minute:g} requests a minute (burst {settings.rate_burst}); "
        f"retry in {seconds}s",
        {"Retry-After": str(seconds)},
    )


def only_visible_rows(state: ORMExecuteState) -> None:
    """``do_orm_execute`` hook: a non-admin caller's SELECTs see its own jobs and runs only."""
    caller = current_caller()
    if caller is None or caller.admin:
        return
    if not state.is_select or state.is_column_load or state.is_relationship_load:
        return  # relationship and column loads inherit the criteria from the parent query
    owner = caller.owner
    state.statement = state.statement.options(
        with_loader_criteria(Job, lambda cls: cls.owner == owner, include_aliases=True),
        with_loader_criteria(
            Run,
            lambda cls: (
                exists().where(Job.id == cls.job_id, Job.owner == owner).correlate_except(Job)
            ),  # the subquery keeps its own jobs even when the query has some
            include_aliases=True,
        ),
    )


# --- binding --------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keys_configured(settings: Settings) -> bool:
    from models.store.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database())
    try:
        with make_sessionmaker(engine)() as session:
            return any_active_key(session)
    finally:
        engine.dispose()


def safe_bind(settings: Settings, host: str) -> tuple[str, str]:
    """The host to bind and what to tell the operator about it.

    With no API key configured the API serves the loopback interface only, whatever was asked
    (unless ``ACTQ_ALLOW_OPEN_BIND=1``): an open service must not be reachable from elsewhere.
    """
    if keys_configured(settings):
        return host, "actq: API keys are required (Authorization: Bearer KEY)"
    if is_loopback(host):
        return host, (
            f"actq: no API keys configured: the API is open to anyone on this machine ({host}); "
            "`actq keys create NAME --admin` makes one and closes it"
        )
    if settings.allow_open_bind:
        return host, (
            f"actq: WARNING: no API keys configured and ACTQ_ALLOW_OPEN_BIND is set: the API on "
            f"{host} is open to every host that can reach it"
        )
    return "127.0.0.1", (
        f"actq: no API keys configured, so the API binds 127.0.0.1 (loopback only) instead of "
        f"{host}; create a key with `actq keys create NAME --admin` and restart to serve other "
        "hosts"
    )
