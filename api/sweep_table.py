"""A sweep's result as one table: a row per grid point, shared by its JSON, CSV and page.

Each row: the ablated node (type, layer, index), token and value; the point's run (``JOB/0``) and
its status; its loss and the change against the clean baseline's; the tracked node's value in the
point's node table and its change (None when the node is not in that run's top-k: separate runs
rank their own nodes); and the link to the point's comparison with the baseline.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from api.sweep_schemas import SweepTable, SweepView
from models.store.sweeps import job_losses, point_statuses, points_of, progress
from models.store.tables import Sweep

CSV_COLUMNS = (
    "index",
    "nodeType",
    "layer",
    "nodeIndex",
    "position",
    "value",
    "run",
    "status",
    "loss",
    "lossChange",
    "nodeValue",
    "nodeChange",
)


def _change(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def baseline_run(sweep: Sweep) -> str | None:
    return f"{sweep.baseline_job_id}/0" if sweep.baseline_job_id else None


def compare_url(sweep: Sweep, run: str | None) -> str | None:
    base = baseline_run(sweep)
    return f"/compare?a={base}&b={run}" if base and run else None


def _baseline_loss(session, sweep: Sweep) -> float | None:
    if sweep.baseline_job_id is None:
        return None
    return job_losses(session, [sweep.baseline_job_id]).get(sweep.baseline_job_id)


def rows(session, sweep: Sweep) -> list[dict[str, Any]]:
    statuses = point_statuses(session, sweep.id)
    points = points_of(session, sweep.id)
    losses = job_losses(session, [p.job_id for p in points if p.job_id])
    base_loss = _baseline_loss(session, sweep)
    out = []
    for p in points:
        run = f"{p.job_id}/0" if p.job_id else None
        loss = losses.get(p.job_id, p.loss)
        out.append(
            {
                "index": p.index,
                "nodeType": p.node_type,
                "layer": p.layer,
                "nodeIndex": p.node_index,
                "position": p.position,
                "value": p.value,
                "run": run,
                "status": statuses.get(p.index),
                "loss": loss,
                "lossChange": _change(loss, base_loss),
                "nodeValue": p.node_value,
                "nodeChange": _change(p.node_value, sweep.baseline_node_value),
                "compareUrl": compare_url(sweep, run),
            }
        )
    return out


def sweep_view(session, sweep: Sweep, with_points: bool = True) -> dict[str, Any]:
    """The sweep's JSON (``api.sweep_schemas``: ``SweepTable``, or ``SweepView`` without the
    points)."""
    view = {
        "id": sweep.id,
        "status": sweep.status,
        "model": sweep.model,
        "endpoint": sweep.endpoint,
        "grid": sweep.grid,
        "node": sweep.node,
        "group": sweep.node_group,
        "label": sweep.label,
        "tags": sweep.tags,
        "progress": progress(session, sweep),
        "baseline": {
            "run": baseline_run(sweep),
            "loss": _baseline_loss(session, sweep),
            "nodeValue": sweep.baseline_node_value,
        },
        "attempts": sweep.attempts,
        "error": sweep.error,
        "createdAt": sweep.created_at.isoformat() if sweep.created_at else None,
        "finishedAt": sweep.finished_at.isoformat() if sweep.finished_at else None,
        "url": f"/v1/sweeps/{sweep.id}",
        "csvUrl": f"/v1/sweeps/{sweep.id}.csv",
        "pageUrl": f"/sweeps/{sweep.id}",
        "runsUrl": f"/v1/runs?tag=sweep:{sweep.id}",
    }
    if with_points:
        return SweepTable(**view, points=rows(session, sweep)).body()
    return SweepView(**view).body()


def as_csv(table: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return out.getvalue()
