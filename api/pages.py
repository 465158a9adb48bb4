"""Server-rendered pages: run history (``/runs``), a permalink per run (``/runs/JOB/N``) and the
comparison of two runs (``/compare?a=&b=``). Plain HTML from Jinja templates with inline SVG
charts (``api.charts``) and one small stylesheet; every page reads fine without JavaScript. The
data comes from the same functions as the JSON routes (``api.runs``, ``models.store.history``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, redirect, render_template, request, url_for

from api.charts import Bar, diverging_bars, fmt, heat_style
from api.database import get_session
from api.jobs import _bool, _limit
from api.page_views import (
    LOSS_MEANING,
    ablation_texts,
    job_record,
    loss_change_chart,
    pinned_keys,
    run_results,
    utc,
    with_pinned,
)
from api.run_views import compare_query, run_detail, run_view
from api.runs import comparison_of, no_baseline_message, run_filter, submit_clean_twin
from api.submission import check_metadata
from models.errors import ActqError
from models.store.corrupt import run_corruption, split_readable
from models.store.history import edit_run, find_baseline, find_run, list_runs

bp = Blueprint("pages", __name__)

CHART_ROWS = 15
TABLE_ROWS = 40
ONE_SIDED_ROWS = 10
TOKEN_ROWS = 20
PREFERRED_GROUP = "act_times_grad"
FILTER_FIELDS = (
    "model",
    "promptContains",
    "samePromptAs",
    "hasAblations",
    "ablates",
    "tag",
    "label",
    "status",
    "endpoint",
    "since",
    "until",
)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_filter(fmt, "num")
    app.add_template_filter(lambda v: fmt(v, signed=True), "signed")
    app.add_template_filter(lambda v: json.dumps(v, ensure_ascii=False), "compact")
    app.add_template_filter(utc, "utc")


@bp.errorhandler(ActqError)
def error_page(error: ActqError):
    return render_template("error.html", error=error), error.status


@bp.get("/")
def index():
    return redirect(url_for("pages.runs_page"))


# --- history --------------------------------------------------------------------------------


@bp.get("/runs")
def runs_page():
    f = run_filter()
    runs, cursor = list_runs(get_session(), f, limit=_limit(), cursor=request.args.get("cursor"))
    older = None
    if cursor:
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
        older = "/runs?" + urlencode([*args, ("cursor", cursor)])
    runs, bad = split_readable(runs, run_corruption)
    return render_template(
        "runs.html",
        runs=[run_view(run) for run in runs],
        skipped=[(run.address, reason) for run, reason in bad],
        filters={k: request.args.get(k, "") for k in FILTER_FIELDS},
        older=older,
    )


@bp.get("/runs/<job_id>")
def run_of_job(job_id: str):
    return redirect(url_for("pages.run_page", job_id=job_id, index=0))


@bp.get("/runs/<job_id>/<int:index>")
def run_page(job_id: str, index: int):
    session = get_session()
    run = find_run(session, f"{job_id}/{index}")
    baseline = find_baseline(session, run)
    compare_baseline = None
    if baseline is not None:
        compare_baseline = f"/compare?{compare_query(baseline.address, run.address)}"
    return render_template(
        "run.html",
        run=run_detail(run),
        baseline=run_view(baseline) if baseline else None,
        compare_baseline=compare_baseline,
        no_baseline=None if baseline else no_baseline_message(run),
        results=run_results(run, request.args.get("group") or PREFERRED_GROUP),
        job=job_record(run),
        loss_meaning=LOSS_MEANING,
    )


@bp.post("/runs/<job_id>/<int:index>/edit")
def edit_run_page(job_id: str, index: int):
    session = get_session()
    tags = [t.strip() for t in request.form.get("tags", "").split(",") if t.strip()]
    label = request.form.get("label") or None
    check_metadata(label, tags)  # before the edit: a flush would send it to the database
    edit_run(find_run(session, f"{job_id}/{index}"), {"label": label, "tags": tags})
    session.commit()
    return redirect(url_for("pages.run_page", job_id=job_id, index=index), code=303)


@bp.post("/runs/<job_id>/<int:index>/baseline")
def submit_baseline_page(job_id: str, index: int):
    job = submit_clean_twin(find_run(get_session(), f"{job_id}/{index}"))
    return redirect(url_for("pages.run_page", job_id=job.id, index=0), code=303)


# --- comparison -----------------------------------------------------------------------------


def _group_rows(table: dict, group: str) -> tuple[list[dict], list[dict]]:
    """(rows with a change in ``group``, largest first; rows in one run's top-k only)."""
    changed = [r for r in table["rows"] if r["values"][group]["delta"] is not None]
    changed.sort(key=lambda r: -abs(r["values"][group]["delta"]))
    one_sided = [r for r in table["rows"] if not (r["inA"] and r["inB"])]
    return changed, one_sided


def _chart(rows: list[dict], group: str) -> Any:
    bars = [
        Bar(
            r["label"],
            r["values"][group]["delta"],
            f"{r['label']}\n{group}: a {fmt(r['values'][group]['a'])} "
            f"-> b {fmt(r['values'][group]['b'])} ({fmt(r['values'][group]['delta'], True)})",
        )
        for r in rows[:CHART_ROWS]
        if r["values"][group]["delta"] != 0
    ]
    caption = f"Nodes that moved most: change of {group} (b - a)"
    return diverging_bars(bars, caption=caption)


def _token_view(sums: dict | None, group: str) -> dict | None:
    if not sums:
        return None
    picked = [i for i, c in enumerate(sums["columns"]) if c["group"] == group]
    columns = [sums["columns"][i] for i in picked]
    rows = [{**row, "cells": [row["cells"][i] for i in picked]} for row in sums["rows"]]
    scale = max(
        (abs(c["delta"]) for r in rows for c in r["cells"] if c["delta"] is not None), default=0.0
    )
    for row in rows:
        row["styles"] = [heat_style(c["delta"], scale) for c in row["cells"]]
    legend = {
        "up": heat_style(scale or 1.0, scale or 1.0),
        "down": heat_style(-(scale or 1.0), scale or 1.0),
    }
    return {"columns": columns, "rows": rows, "scale": scale, "legend": legend}


def _links(a: str, b: str, group: str, only_diff: bool) -> dict[str, str]:
    def page(**changes: Any) -> str:
        args = {"a": a, "b": b, "group": group, "onlyDiff": "1" if only_diff else ""}
        args.update(changes)
        return "/compare?" + urlencode({k: v for k, v in args.items() if v})

    return {
        "swap": page(a=b, b=a),
        "toggle": page(onlyDiff="" if only_diff else "1"),
        "json": f"/v1/compare?{compare_query(a, b)}" + ("&onlyDiff=1" if only_diff else ""),
        "group": page(group="GROUP"),
    }


@bp.get("/compare")
def compare_page():
    a, b = request.args.get("a", "").strip(), request.args.get("b", "").strip()
    if not a or not b:
        return render_template("compare.html", result=None, a=a, b=b)
    only_diff = bool(_bool("onlyDiff"))
    result = comparison_of(a, b, only_diff, None)
    table = result["nodeTables"][0] if result["nodeTables"] else None
    groups = table["groups"] if table else []
    group = request.args.get("group") or (PREFERRED_GROUP if PREFERRED_GROUP in groups else "")
    if table and group not in groups:
        group = groups[0]
    changed, one_sided = _group_rows(table, group) if table else ([], [])
    pinned = pinned_keys(result)
    rows, more_rows = with_pinned(changed, TABLE_ROWS, pinned)
    one_sided_rows, hidden_one_sided = with_pinned(one_sided, ONE_SIDED_ROWS, pinned)
    for row in result["settings"]:
        row["a"], row["b"] = ablation_texts(row["a"]), ablation_texts(row["b"])
    return render_template(
        "compare.html",
        result=result,
        a=result["a"]["run"],
        b=result["b"]["run"],
        table=table,
        group=group,
        rows=rows,
        more_rows=more_rows,
        one_sided=one_sided_rows,
        hidden_one_sided=hidden_one_sided,
        chart=_chart(changed, group) if table else None,
        loss_chart=loss_change_chart(result["loss"]),
        loss_meaning=LOSS_MEANING,
        output_rows=(result["topOutputTokens"] or {}).get("rows", [])[:TOKEN_ROWS],
        tokens=_token_view(result["tokenSums"], group),
        links=_links(result["a"]["run"], result["b"]["run"], group, only_diff),
        only_diff=only_diff,
    )
