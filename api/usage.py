"""Telling a caller how a route is used: unknown query parameters and wrong methods.

A misspelled query parameter (``/v1/jobs?stauts=finished``) would otherwise be ignored and
answer as if no filter were given; it is a 400 naming it and listing the ones the route knows.
``GET`` on a ``POST`` route is a 405 that says which method to use and lists the routes.
Only the ``/v1`` routes are checked: the TDB-compatible routes ignore what they do not know, as
TDB does.
"""

from __future__ import annotations

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from api.errors import error_body
from models.errors import RequestError

PAGES = {"limit", "cursor"}
JOB_FILTERS = {"model", "status", "endpoint", "prompt", "promptContains", "tag", "label"}
JOB_FILTERS |= {"hasAblations", "ablates", "since", "until"} | PAGES
RUN_FILTERS = JOB_FILTERS | {"samePromptAs", "sameAblationsAs"}

# The query parameters of each /v1 view (by Flask endpoint name); a view not named is unchecked.
QUERY_PARAMETERS: dict[str, set[str]] = {
    "jobs.submit_job": {"wait", "model", "label", "tag", "fresh"},
    "jobs.job_status": {"wait"},
    "jobs.job_result": {"wait"},
    "jobs.cancel_job": set(),
    "jobs.history": JOB_FILTERS,
    "runs.history": RUN_FILTERS,
    "runs.show_run": set(),
    "runs.edit_run_route": set(),
    "runs.edit_job_route": set(),
    "runs.compare_route": {"a", "b", "onlyDiff", "only_diff", "sort", "top"},
    "runs.baseline": set(),
    "runs.submit_baseline": set(),
    "meta.models": set(),
}


def check_query_parameters() -> None:
    rule = request.url_rule
    if rule is None or not request.path.startswith("/v1/"):
        return
    known = QUERY_PARAMETERS.get(rule.endpoint)
    if known is None:
        return
    unknown = sorted(set(request.args) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestError(
            f"unknown query parameter(s) {', '.join(unknown)} for {request.method} "
            f"{rule.rule}; it takes: {allowed}",
            path=unknown[0],
        )


def v1_routes() -> list[str]:
    """``METHOD /v1/...`` for every /v1 route, as a 405 lists them."""
    found = set()
    for rule in current_app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                found.add(f"{method} {rule.rule}")
    return sorted(found, key=lambda r: (r.split(" ", 1)[1], r))


def method_not_allowed(error: MethodNotAllowed):
    allowed = sorted(set(error.valid_methods or ()) - {"HEAD", "OPTIONS"})
    use = " or ".join(allowed) or "another method"
    message = f"{request.method} is not allowed on {request.path}: use {use}."
    if request.path.startswith("/v1/"):
        message += " The /v1 routes: " + "; ".join(v1_routes())
    response = jsonify(error_body("method_not_allowed", message))
    response.status_code = 405
    response.headers["Allow"] = ", ".join(error.valid_methods or ())
    return response


def init_app(app: Flask) -> None:
    app.before_request(check_query_parameters)
    app.register_error_handler(MethodNotAllowed, method_not_allowed)
