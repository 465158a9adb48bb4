"""Run history and comparison routes under ``/v1``.

``GET /v1/runs`` lists runs newest first, filtered and paged with a cursor; ``GET /v1/runs/JOB/N``
is one run (``/v1/runs/JOB`` its first); ``PATCH`` on a run or a job edits label and tags.
``GET /v1/compare?a=RUN&b=RUN`` compares two runs (``onlyDiff=1`` keeps what differs, ``sort=GROUP``
sorts node tables by one group, ``top=N`` keeps the N rows that moved most).
``GET /v1/runs/RUN/baseline`` finds the run's clean baseline; ``POST`` submits it when none exists.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from flask import Blueprint, Flask, jsonify, request

from api.comparison import clean_twin, compare
from api.database import get_session
from api.jobs import _bool, _choice, _limit, _time
from api.run_views import (
    BaselineView,
    RunList,
    compare_query,
    run_detail,
    run_view,
    sides_of,
)
from api.schemas import SkippedRow, accepted, job_view
from api.submission import check_metadata, submit
from models.errors import NotFoundError, RequestError, RequestValidationError
from models.store.corrupt import run_corruption, split_readable
from models.store.history import (
    RunFilter,
    edit_job,
    edit_run,
    find_baseline,
    find_run,
    list_runs,
)
from models.store.lifecycle import ENDPOINTS, JobStatus
from models.store.run_keys import parse_key
from models.store.tables import Job, Run

bp = Blueprint("runs", __name__, url_prefix="/v1")

EDIT_FIELDS = {"label", "tags", "addTags", "removeTags"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


# --- history --------------------------------------------------------------------------------


def _like(name: str) -> Run | None:
    address = request.args.get(name)
    return find_run(get_session(), address, name) if address else None


def run_filter() -> RunFilter:
    """The filters of ``GET /v1/runs`` (and of the ``/runs`` page) from the query string."""
    same_prompt = _like("samePromptAs")
    same_ablations = _like("sameAblationsAs")
    return RunFilter(
        model=request.args.get("model") or (same_prompt.model if same_prompt else None),
        prompt=request.args.get("prompt") or (same_prompt.prompt if same_prompt else None),
        prompt_contains=request.args.get("promptContains") or None,
        has_ablations=_bool("hasAblations"),
        ablates=[parse_key(k) for k in request.args.getlist("ablates") if k.strip()],
        ablations=same_ablations.ablations if same_ablations else None,
        tags=[t for t in request.args.getlist("tag") if t],
        label=request.args.get("label") or None,
        status=_choice("status", {s.value for s in JobStatus}) or None,
        endpoint=_choice("endpoint", set(ENDPOINTS)) or None,
        since=_time("since"),
        until=_time("until"),
    )


@bp.get("/runs")
def history():
    f = run_filter()
    runs, cursor = list_runs(get_session(), f, limit=_limit(), cursor=request.args.get("cursor"))
    next_url = None
    if cursor:
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
        next_url = "/v1/runs?" + urlencode([*args, ("cursor", cursor)])
    runs, bad = split_readable(runs, run_corruption)
    skipped = [SkippedRow(id=run.address, reason=reason) for run, reason in bad]
    page = RunList(
        runs=[run_view(run) for run in runs], skipped=skipped, next_cursor=cursor, next=next_url
    )
    return jsonify(page.body())


@bp.get("/runs/<job_id>")
@bp.get("/runs/<job_id>/<int:index>")
def show_run(job_id: str, index: int = 0):
    return jsonify(run_detail(find_run(get_session(), f"{job_id}/{index}")).body())


# --- label and tags -------------------------------------------------------------------------


def _edit_body() -> dict:
    """The PATCH body, read as JSON whatever its Content-Type (as the POST routes read theirs:
    ``curl -X PATCH -d '{...}'`` sends form encoding by default)."""
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise RequestValidationError(
            "the body must be a JSON object with label, tags, addTags and/or removeTags, "
            'e.g. {"label": "L1H0 off", "addTags": ["heads"]}'
        )
    unknown = set(body) - EDIT_FIELDS
    if unknown:
        raise RequestValidationError(f"unknown fields {sorted(unknown)}; expected {EDIT_FIELDS}")
    if "label" in body and body["label"] is not None and not isinstance(body["label"], str):
        raise RequestValidationError("label must be a string or null", "label")
    for name in EDIT_FIELDS - {"label"}:
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(t, str) for t in value)
        ):
            raise RequestValidationError(f"{name} must be a list of strings", name)
    # Lengths and NULs before the edit is applied: loading a job's runs flushes the edit, and
    # PostgreSQL refuses an over-long or NUL-bearing value with an error, not a 422.
    given = [t for name in EDIT_FIELDS - {"label"} for t in body.get(name) or []]
    check_metadata(body.get("label"), given, count=False)
    return body


@bp.patch("/runs/<job_id>")
@bp.patch("/runs/<job_id>/<int:index>")
def edit_run_route(job_id: str, index: int = 0):
    body = _edit_body()
    session = get_session()
    run = edit_run(find_run(session, f"{job_id}/{index}"), body)
    check_metadata(run.label, run.tags)
    session.commit()
    return jsonify(run_detail(run).body())


@bp.patch("/jobs/<job_id>")
def edit_job_route(job_id: str):
    body = _edit_body()
    session = get_session()
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}", path="id")
    edit_job(job, body)
    check_metadata(job.label, job.tags)
    session.commit()
    return jsonify(job_view(job).body())


# --- comparison and baselines ---------------------------------------------------------------


def _top() -> int | None:
    raw = request.args.get("top")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise RequestValidationError("top must be a positive integer", "top")
    return int(raw)


def comparison_of(a_address: str, b_address: str, only_diff: bool, sort: str | None) -> dict:
    session = get_session()
    a, b = find_run(session, a_address, "a"), find_run(session, b_address, "b")
    result = compare(*sides_of(a, b), only_diff=only_diff, sort=sort)
    query = compare_query(a.address, b.address)
    result["url"] = f"/v1/compare?{query}"
    result["page"] = f"/compare?{query}"
    return result


def limit_rows(result: dict, top: int | None) -> dict:
    if top is not None:
        for table in result["nodeTables"]:
            table["rows"] = table["rows"][:top]
        if result["topOutputTokens"]:
            result["topOutputTokens"]["rows"] = result["topOutputTokens"]["rows"][:top]
    return result


@bp.get("/compare")
def compare_route():
    a, b = request.args.get("a"), request.args.get("b")
    if not a or not b:
        raise RequestValidationError(
            "name two runs: /v1/compare?a=JOB/N&b=JOB/N", "a" if not a else "b"
        )
    only_diff = bool(_bool("onlyDiff") or _bool("only_diff"))
    result = comparison_of(a, b, only_diff, request.args.get("sort") or None)
    return jsonify(limit_rows(result, _top()))


def no_baseline_message(run: Run) -> str:
    return (
        f"no finished run of the same prompt, model and target/distractor tokens without "
        f"ablations to compare {run.address} with. `actq compare {run.address} --baseline` "
        f"submits one (the same request without its ablations) and waits for it; "
        f"POST /v1/runs/{run.address}/baseline submits it without waiting."
    )


@bp.get("/runs/<job_id>/baseline")
@bp.get("/runs/<job_id>/<int:index>/baseline")
def baseline(job_id: str, index: int = 0):
    session = get_session()
    run = find_run(session, f"{job_id}/{index}")
    found = find_baseline(session, run)
    if found is None:
        raise NotFoundError(no_baseline_message(run), path="run")
    query = compare_query(found.address, run.address)
    view = BaselineView(
        run=run.address,
        baseline=run_view(found),
        compare_url=f"/v1/compare?{query}",
        compare_page=f"/compare?{query}",
    )
    return jsonify(view.body())


def submit_clean_twin(run: Run) -> Job:
    """Submit the run's clean twin: its own sub-request alone, without ablations."""
    if not run.has_ablations:
        raise RequestError(f"run {run.address} has no ablations: it is a clean run", "run")
    twin = clean_twin(run.job.endpoint, run.job.request, run.index)
    return submit(
        run.job.endpoint,
        json.dumps(twin).encode(),
        run.model,
        label=f"baseline of {run.address}",
        tags=list(run.tags or []),
    )


@bp.post("/runs/<job_id>/baseline")
@bp.post("/runs/<job_id>/<int:index>/baseline")
def submit_baseline(job_id: str, index: int = 0):
    run = find_run(get_session(), f"{job_id}/{index}")
    job = submit_clean_twin(run)
    body = accepted(job).body()
    body["run"] = f"{job.id}/0"
    query = compare_query(f"{job.id}/0", run.address)
    body["compareUrl"] = f"/v1/compare?{query}"
    body["comparePage"] = f"/compare?{query}"
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response
