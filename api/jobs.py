"""The job routes under ``/v1``: submit, status, result, history.

``POST /v1/<endpoint>`` answers ``202`` with the job's id and URLs (``Location`` too), or with
``?wait=S`` the TDB response itself if the job finished within S seconds. ``GET /v1/jobs/<id>``
is the job's status, ``GET /v1/jobs/<id>/result`` the stored TDB response byte for byte (``202``
while pending, the stored error with its status if it failed), ``GET /v1/jobs`` the history.
``POST /v1/jobs/<id>/cancel`` cancels a queued job at once (``200``) and asks a started one to stop
at its next stage boundary (``202``); a job that already finished or failed is a ``409``. Every
route sees only the caller's jobs (``api.auth``).
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, jsonify, request

from api.database import get_session
from api.schemas import JobList, SkippedRow, accepted, job_view
from api.submission import request_body, submit, wait_cap, wait_for
from models.errors import ActqError, NotFoundError, RequestValidationError
from models.store.corrupt import job_corruption, split_readable
from models.store.jobs import JobFilter, get_job, list_jobs, response_bytes
from models.store.lifecycle import ENDPOINTS, JobStatus
from models.store.outcomes import get_outcome
from models.store.recovery import request_cancel
from models.store.run_keys import parse_key
from models.store.tables import Job

bp = Blueprint("jobs", __name__, url_prefix="/v1")

RETRY_AFTER_SECONDS = "1"
DEFAULT_PAGE = 50
MAX_PAGE = 500


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def query_float(name: str, default: float | None = None) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RequestValidationError(f"{name} must be a number of seconds", name) from None
    if not value >= 0 or value == float("inf"):
        raise RequestValidationError(f"{name} must be a finite number >= 0", name)
    return value


def job_tags() -> list[str]:
    tags = request.args.getlist("tag")
    header = request.headers.get("X-Actq-Tags")
    if header:
        tags += [t.strip() for t in header.split(",") if t.strip()]
    return tags


def job_label() -> str | None:
    return request.args.get("label") or request.headers.get("X-Actq-Label")


def accepts_deflate() -> bool:
    """Whether the client takes ``Content-Encoding: deflate`` (zlib data, RFC 9110 §8.4.1.2)."""
    for item in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "deflate":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def result_response(job: Job) -> Response:
    """The stored outcome of a final job: the TDB response, or the stored error.

    The response is stored zlib-compressed; a client that accepts deflate gets those bytes as they
    are (a tenth of the size, nothing to decompress on the server), any other the JSON text."""
    if job.status == JobStatus.FINISHED:
        if accepts_deflate():
            response = Response(job.response, status=200, mimetype="application/json")
            response.headers["Content-Encoding"] = "deflate"
        else:
            response = Response(response_bytes(job), status=200, mimetype="application/json")
        response.vary.add("Accept-Encoding")
        return response
    error = dict(job.error or {})
    if job.status == JobStatus.CANCELED:
        error = {"type": "canceled", "message": "the job was canceled", "status": 409}
    body = {"error": {k: error.get(k) for k in ("type", "message", "path")}}
    return jsonify(body), int(error.get("status") or 500)


def pending_response(job: Job) -> Response:
    response = jsonify(job_view(job).body())
    response.status_code = 202
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response


@bp.post("/<endpoint>")
def submit_job(endpoint: str):
    if endpoint not in ENDPOINTS:
        raise NotFoundError(f"unknown endpoint {endpoint!r}; expected one of {list(ENDPOINTS)}")
    wait = min(query_float("wait", 0.0) or 0.0, wait_cap())
    job = submit(endpoint, request_body(), request.args.get("model"), job_label(), job_tags())
    warnings = job.warnings
    if wait > 0:
        job = wait_for(job.id, wait, outcome=True) or job
        if JobStatus(job.status).is_final:
            return _with_warnings(result_response(job), warnings)
    response = jsonify(accepted(job).body())
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response


def _with_warnings(response: Response, warnings: list | None) -> Response:
    """A result body is TDB's bytes as they are: its warnings ride in a header instead."""
    if warnings:
        response.headers["X-Actq-Warnings"] = json.dumps([w["message"] for w in warnings])
    return response


def _find(job_id: str, read=get_job) -> Job:
    job = read(get_session(), job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}", path="id")
    return job


@bp.get("/jobs/<job_id>")
def job_status(job_id: str):
    job = _find(job_id)
    wait = min(query_float("wait", 0.0) or 0.0, wait_cap())
    if wait > 0 and not JobStatus(job.status).is_final:
        job = wait_for(job_id, wait) or job
    response = jsonify(job_view(job).body())
    if not JobStatus(job.status).is_final:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


@bp.get("/jobs/<job_id>/result")
def job_result(job_id: str):
    job = _find(job_id, read=get_outcome)  # a result needs no runs (a pending answer does)
    wait = min(query_float("wait", 0.0) or 0.0, wait_cap())
    if JobStatus(job.status).is_final:
        return result_response(job)
    waited = wait_for(job_id, wait, outcome=True) if wait > 0 else None
    if waited is not None and JobStatus(waited.status).is_final:
        return result_response(waited)
    if waited is None:
        get_session().expunge(job)
        waited = _find(job_id)
    return pending_response(waited)


class ConflictError(ActqError):
    status = 409
    type = "conflict"


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _find(job_id)
    session = get_session()
    status = request_cancel(session, job.id)
    session.commit()
    session.refresh(job)
    if status in (JobStatus.FINISHED, JobStatus.FAILED):
        raise ConflictError(f"job {job_id} already {status}; nothing to cancel", path="id")
    response = jsonify(job_view(job).body())
    if status == JobStatus.STARTED:  # it stops at its next stage boundary
        response.status_code = 202
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response


def _choice(name: str, allowed) -> str | None:
    value = request.args.get(name)
    if value is not None and value not in allowed:
        raise RequestValidationError(f"{name} must be one of {sorted(allowed)}", name)
    return value


def _time(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        value.astimezone(dt.UTC)  # a time that only exists before year 1 in UTC cannot be compared
    except (ValueError, OverflowError):
        raise RequestValidationError(f"{name} must be an ISO 8601 time", name) from None
    return value


def _bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise RequestValidationError(f"{name} must be true or false", name)


def _limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise RequestValidationError(f"limit must be an integer from 1 to {MAX_PAGE}", "limit")
    return int(raw)


def history_filter() -> JobFilter:
    return JobFilter(
        model=request.args.get("model"),
        status=_choice("status", {s.value for s in JobStatus}),
        endpoint=_choice("endpoint", set(ENDPOINTS)),
        prompt=request.args.get("prompt"),
        prompt_contains=request.args.get("promptContains"),
        tags=request.args.getlist("tag"),
        label=request.args.get("label"),
        has_ablations=_bool("hasAblations"),
        ablates=[parse_key(k) for k in request.args.getlist("ablates") if k.strip()],
        since=_time("since"),
        until=_time("until"),
    )


@bp.get("/jobs")
def history():
    f = history_filter()
    limit = _limit()
    jobs, cursor = list_jobs(get_session(), f, limit=limit, before=request.args.get("cursor"))
    next_url = None
    if cursor:
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
        next_url = "/v1/jobs?" + urlencode([*args, ("cursor", cursor)])
    jobs, bad = split_readable(jobs, job_corruption)
    skipped = [SkippedRow(id=job.id, reason=reason) for job, reason in bad]
    page = JobList(
        jobs=[job_view(job) for job in jobs], skipped=skipped, next_cursor=cursor, next=next_url
    )
    return jsonify(page.body())
