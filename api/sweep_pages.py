"""actq's page of a sweep (``/sweeps/ID``): progress, the heatmaps of the loss change (each cell
links to its point's comparison with the clean baseline), and the points that moved the loss
most. Plain HTML with inline SVG (``api.sweep_charts``); the data comes from the same table as the
sweep's JSON and CSV (``api.sweep_table``)."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template

from api.database import get_session
from api.sweep_charts import heatmap, panels
from api.sweep_table import sweep_view
from api.sweeps import visible_sweep
from models.errors import ActqError

bp = Blueprint("sweep_pages", __name__)
TOP_CELLS = 20


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.errorhandler(ActqError)
def error_page(error: ActqError):
    return render_template("error.html", error=error), error.status


def top_cells(points: list[dict], n: int = TOP_CELLS) -> list[dict]:
    moved = [p for p in points if p.get("lossChange") is not None]
    return sorted(moved, key=lambda p: (-abs(p["lossChange"]), p["index"]))[:n]


@bp.get("/sweeps/<sweep_id>")
def sweep_page(sweep_id: str):
    sweep = visible_sweep(sweep_id)
    view = sweep_view(get_session(), sweep)
    changes = [abs(p["lossChange"]) for p in view["points"] if p["lossChange"] is not None]
    scale = max(changes, default=0.0)
    charts = [(panel.title, heatmap(panel, scale)) for panel in panels(view["points"])]
    return render_template(
        "sweep.html", sweep=view, charts=charts, scale=scale, top=top_cells(view["points"])
    )
