"""Sweep routes: ``POST /v1/sweeps``, ``GET /v1/sweeps/ID`` (JSON, or CSV as ``ID.csv`` or
``?format=csv``), ``POST /v1/sweeps/ID/cancel``.

A submission is checked as completely as a job is before anything is stored: the body's shape,
the base as the request it becomes (``batched_tdb`` or ``batched``, through the job's own checks,
with paths in the sweep's body), the grid against the model (``models.checks.sweeps``), one
point's request, and the cost (each point under the per-job limits, all under the sweep's). Then
the sweep and its points are committed ``queued`` and its one message goes to the model's queue
(the outbox: marked published once the broker took it; if the broker is down the sweep is still
accepted, 202, and a worker's reaper publishes it).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Flask, Response, jsonify, request

from api import limits
from api.auth import current_caller, current_owner
from api.database import get_session
from api.queue import publish_row
from api.served import served_models
from api.submission import check_metadata, request_body
from api.sweep_table import as_csv, rows, sweep_view
from models.checks import validate_request
from models.checks.cost import estimate_cost
from models.checks.json_shape import check_json_shape
from models.checks.sweeps import (
    base_of,
    check_sweep_cost,
    grid_points,
    in_base,
    point_request,
)
from models.errors import ActqError, NotFoundError
from models.store.sweeps import SWEEP_TASK, create_sweep, request_sweep_cancel
from models.store.tables import Sweep
from models.wire.protocol import parse_as, parse_request, to_wire
from models.wire.sweeps import SweepRequest

log = logging.getLogger(__name__)
bp = Blueprint("sweeps", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _checked(endpoint: str, body: dict, served, settings):
    parsed = parse_request(endpoint, json.dumps(body).encode())
    limits.check_request(parsed, served.tokenizer, settings)
    validate_request(endpoint, parsed, served.meta, served.tokenizer, served.autoencoders)
    return parsed


def _prepare(raw: bytes | bytearray, served):
    settings = limits.limits()
    check_json_shape(raw, limits.shape_limits(settings))
    asked = parse_as(SweepRequest, raw)
    check_metadata(asked.label, asked.tags)
    base = base_of(asked)
    try:
        parsed = _checked(base.endpoint, base.request, served, settings)
    except ActqError as error:
        raise in_base(error, base) from None
    wire = to_wire(parsed)
    base = type(base)(base.endpoint, wire, base.path)
    n_tokens = len(served.tokenizer.encode(base.prompt))
    points = grid_points(asked.grid, served.meta, n_tokens, settings.max_sweep_points)
    # One point per distinct node (the first 64), and the highest index of each kind and layer:
    # a latent's range is the served AE's, which only the request's own checks know.
    distinct = list({(p.node_type, p.layer, p.index): p for p in points}.values())
    highest = {}
    for p in points:
        if p.index >= highest.get((p.node_type, p.layer), p).index:
            highest[(p.node_type, p.layer)] = p
    point_parsed = None
    for sample in [*distinct[:64], *highest.values(), points[-1]]:
        try:
            point_parsed = _checked(
                base.endpoint, point_request(base, sample, sample.value or 0.0), served, settings
            )
        except ActqError as error:
            error.message = f"grid point {sample.as_dict()}: {error.message}"
            error.path = "grid"
            raise
    cost = estimate_cost(base.endpoint, point_parsed, served.meta, served.tokenizer)
    check_sweep_cost(cost, len(points), settings)
    return asked, base, points, cost


@bp.post("/v1/sweeps")
def submit_sweep():
    served = served_models().get(request.args.get("model"))
    asked, base, points, cost = _prepare(request_body(), served)
    session = get_session()
    sweep = create_sweep(
        session,
        [p.as_dict() for p in points],
        model=served.meta.name,
        model_revision=served.meta.revision,
        autoencoders=served.autoencoders.record(),
        endpoint=base.endpoint,
        base_request=base.request,
        grid=asked.grid.model_dump(mode="json", by_alias=True, exclude_none=True),
        node=None if asked.node is None else to_wire(asked.node),
        node_group=asked.group,
        point_memory_bytes=cost.memory_bytes,
        label=asked.label,
        tags=sorted(set(asked.tags)),
        owner=current_owner(),
    )
    session.commit()
    publish_row(session, Sweep, sweep.id, SWEEP_TASK, served.meta.name, "Sweep")
    response = jsonify(sweep_view(session, sweep, with_points=False))
    response.status_code = 202
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    return response


def visible_sweep(sweep_id: str) -> Sweep:
    sweep = get_session().get(Sweep, sweep_id)
    caller = current_caller()
    hidden = (
        caller is not None
        and not caller.admin
        and sweep is not None
        and (sweep.owner != caller.owner)
    )
    if sweep is None or hidden:
        raise NotFoundError(f"no sweep {sweep_id!r}", path="id")
    return sweep


@bp.get("/v1/sweeps/<sweep_id>")
def sweep_status(sweep_id: str):
    as_text = request.args.get("format") == "csv" or sweep_id.endswith(".csv")
    sweep = visible_sweep(sweep_id.removesuffix(".csv"))
    session = get_session()
    if as_text:
        name = f"sweep-{sweep.id}.csv"
        return Response(
            as_csv(rows(session, sweep)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return jsonify(sweep_view(session, sweep))


@bp.post("/v1/sweeps/<sweep_id>/cancel")
def cancel_sweep(sweep_id: str):
    sweep = visible_sweep(sweep_id)
    if sweep.status in ("finished", "failed", "canceled"):
        raise ActqError(f"sweep {sweep_id} already {sweep.status}; nothing to cancel", "id", 409)
    session = get_session()
    status = request_sweep_cancel(session, sweep)
    session.commit()
    session.refresh(sweep)
    response = jsonify(sweep_view(session, sweep, with_points=False))
    response.status_code = 200 if status == "canceled" else 202
    return response
