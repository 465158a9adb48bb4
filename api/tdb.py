"""TDB-compatible routes (``POST /derived_scalars``, ..., ``POST /model_info``): a drop-in server.

Each request becomes a job like any other, then the route waits for it and answers as TDB's
activation server would: ``200`` with the TDB response, or an error with TDB's ``{"message": ...}``
at the top level (TDB's UI reads ``body.message``) next to actq's own ``error`` object; a 422 also
carries a FastAPI-style ``detail`` list. CORS (on every response of this surface) is
``api.tdb_cors``'s; the order of the answers to one client is ``api.tdb_order``'s.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from api.jobs import result_response
from api.submission import request_body, submit, wait_for
from models.errors import ActqError
from models.store.lifecycle import ENDPOINTS, JobStatus

bp = Blueprint("tdb", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def tdb_error(error: ActqError) -> Response:
    body = {"message": error.message, **error.to_dict()}
    if error.status == 422:
        loc = ["body", *(error.path.split(".") if error.path else [])]
        loc = [int(p) if p.isdigit() else p for p in loc]
        body["detail"] = [{"loc": loc, "msg": error.message, "type": error.type}]
    response = jsonify(body)
    response.status_code = error.status
    return response


def _stored_error(job) -> Response:
    response = result_response(job)
    body = response.get_json()
    body = {"message": (body.get("error") or {}).get("message"), **body}
    out = jsonify(body)
    out.status_code = response.status_code
    return out


def _serve(endpoint: str) -> Response:
    try:
        job = submit(endpoint, request_body(), request.args.get("model"))
    except ActqError as error:
        return tdb_error(error)
    seconds = current_app.config["ACTQ_SETTINGS"].tdb_wait_seconds
    job = wait_for(job.id, seconds, outcome=True) or job
    if job.status == JobStatus.FINISHED:
        return result_response(job)
    if JobStatus(job.status).is_final:
        return _stored_error(job)
    response = jsonify(
        {"message": f"job {job.id} is still {job.status}; poll /v1/jobs/{job.id}/result"}
    )
    response.status_code = 504
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response


def _route(endpoint: str):
    def view():
        return _serve(endpoint)

    view.__name__ = f"tdb_{endpoint}"
    bp.add_url_rule(f"/{endpoint}", view_func=view, methods=["POST"])


for _endpoint in ENDPOINTS:
    _route(_endpoint)
