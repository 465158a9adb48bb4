"""Comparison of two runs from their stored request and response: pure functions of JSON.

``compare(a, b)`` takes two ``RunSide``s (a run's own part of its job's request and response,
cut out by ``run_side``) and returns the comparison as JSON: the settings side by side and which
differ, the prompt tokens, the loss of each and its change ``b - a``, the node tables aligned by
node index, the top output-token logits and their ranks, and the per-token sums of
``componentSumsForTokenDisplay``. What cannot be aligned (other models, other prompts, another
endpoint, a run without a result) is said in ``notes``; response parts that are not compared are
listed in ``notCompared`` with the reason. No Flask and no database here, so the numbers can be
tested against stored responses directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from api.comparison_tables import (
    cell,
    derived_scalars_as_table,
    node_table,
    output_tokens,
    token_sums,
)
from models.store.runs import canonical_ablations, canonical_json

TOP_K = "multiple_top_k_derived_scalars_response_data"
DERIVED = "derived_scalars_response_data"
TOKEN_SUMS = "componentSumsForTokenDisplay"
OUTPUT_LOGITS = "topOutputTokenLogits"
NOT_COMPARED = {
    "scored_tokens_response_data": "top-token lists per node are not compared",
    "token_pair_attribution_response_data": "token-pair attributions per node are not compared",
    "derived_attention_scalars_response_data": "per-token attention scalars are not compared",
}
BATCHED = ("batched", "batched_tdb")


@dataclass(frozen=True)
class RunSide:
    """One run as the comparison sees it: its settings and its part of the response."""

    address: str  # JOB/N
    endpoint: str
    model: str
    model_revision: str | None = None
    request: dict[str, Any] | None = None  # the run's own sub-request (or the whole request)
    token_data: dict[str, Any] | None = None  # its inferenceAndTokenData; None without a result
    data_by_name: dict[str, Any] = field(default_factory=dict)  # its processing response data
    status: str = "finished"
    label: str | None = None
    tags: tuple[str, ...] = ()
    created_at: str | None = None
    autoencoders: dict[str, Any] | None = None  # the AEs that served it (name, content hash)
    family: str | None = None  # the model's family, when known


def sub_request(endpoint: str, request: dict[str, Any] | None, index: int) -> dict | None:
    """The part of a job's request that is run ``index``."""
    if not request:
        return None
    if endpoint == "batched_tdb":
        return (request.get("subRequests") or [None])[index]
    if endpoint == "batched":
        return (request.get("inferenceSubRequests") or [None])[index]
    return request


def response_parts(
    endpoint: str, response: dict[str, Any] | None, index: int
) -> tuple[dict | None, dict[str, Any]]:
    """(inferenceAndTokenData, response data by name) of run ``index`` of a job's response."""
    if not response:
        return None, {}
    if endpoint in BATCHED:
        return part_data(endpoint, (response.get("inferenceSubResponses") or [])[index])
    return part_data(endpoint, response)


def part_data(endpoint: str, part: dict[str, Any] | None) -> tuple[dict | None, dict[str, Any]]:
    """(inferenceAndTokenData, response data by name) of one run's part of a response: its
    sub-response in a batched job, the whole response otherwise. Data that is not compared
    keeps only its kind, so a side holds no more than the comparison reads."""
    if not part:
        return None, {}
    if endpoint in BATCHED:
        inference = part.get("inferenceResponse") or {}
        token_data = inference.get("inferenceAndTokenData")
        data = dict(part.get("processingResponseDataByName") or {})
    else:
        token_data = part.get("inferenceAndTokenData")
        data = {
            key.removesuffix("ResponseData"): value
            for key, value in part.items()
            if key.endswith("ResponseData") and isinstance(value, dict)
        }
    for name, value in data.items():
        kind = value.get("responseDataType") if isinstance(value, dict) else None
        if kind in NOT_COMPARED:
            data[name] = {"responseDataType": kind}
    return token_data, data


def run_side(
    address: str,
    endpoint: str,
    model: str,
    model_revision: str | None,
    request: dict | None,
    response: dict | None,
    index: int,
    *,
    part: dict | None = None,
    **extra: Any,
) -> RunSide:
    """A RunSide for run ``index`` of a job, from the job's stored request and response, or
    from ``part``, the run's part of the response read alone (``part_data``)."""
    if part is not None:
        token_data, data = part_data(endpoint, part)
    else:
        token_data, data = response_parts(endpoint, response, index)
    return RunSide(
        address=address,
        endpoint=endpoint,
        model=model,
        model_revision=model_revision,
        request=sub_request(endpoint, request, index),
        token_data=token_data,
        data_by_name=data,
        **extra,
    )


# --- settings -------------------------------------------------------------------------------


def _ablations(items: list | None) -> list:
    return json.loads(canonical_ablations(items))


def _processing(request: dict[str, Any]) -> dict[str, Any] | None:
    if "processingRequestSpecByName" in request:
        return request["processingRequestSpecByName"]
    specs = {k: v for k, v in request.items() if k.endswith("RequestSpec") and k[0] != "i"}
    return specs or None


def run_settings(side: RunSide) -> dict[str, Any]:
    """What a run was asked to do, in the terms runs are compared by (ablations sorted)."""
    revision = f" @ {side.model_revision}" if side.model_revision else ""
    settings: dict[str, Any] = {"endpoint": side.endpoint, "model": side.model + revision}
    if side.autoencoders is not None:  # "differs: autoencoders" when one side has others or none
        settings["autoencoders"] = side.autoencoders
    r = side.request or {}
    if side.endpoint == "batched_tdb":
        trace = {k: r.get(k) for k in ("upstreamNodeToTrace", "downstreamNodeToTrace") if r.get(k)}
        settings.update(
            prompt=r.get("prompt"),
            targetTokens=r.get("targetTokens"),
            distractorTokens=r.get("distractorTokens"),
            ablations=_ablations(r.get("nodeAblations")),
            trace=trace or None,
            componentTypeForMlp=r.get("componentTypeForMlp"),
            componentTypeForAttention=r.get("componentTypeForAttention"),
            topAndBottomKForNodeTable=r.get("topAndBottomKForNodeTable"),
        )
        return settings
    spec = r.get("inferenceRequestSpec") or {}
    loss = spec.get("lossFnConfig") or {}
    settings.update(
        prompt=spec.get("prompt"),
        lossFn=loss.get("name"),
        targetTokens=loss.get("targetTokens"),
        distractorTokens=loss.get("distractorTokens"),
        ablations=_ablations(spec.get("ablationSpecs")),
        trace=spec.get("traceConfig"),
        processing=_processing(r),
    )
    return settings


def settings_rows(a: RunSide, b: RunSide) -> list[dict[str, Any]]:
    sa, sb = run_settings(a), run_settings(b)
    names = list(dict.fromkeys([*sa, *sb]))
    return [
        {
            "name": n,
            "a": sa.get(n),
            "b": sb.get(n),
            "same": canonical_json(sa.get(n)) == canonical_json(sb.get(n)),
        }
        for n in names
    ]


# --- tokens and notes -----------------------------------------------------------------------


def _tokens(side: RunSide) -> list[str]:
    return list((side.token_data or {}).get("tokensAsStrings") or [])


def token_comparison(ta: list[str], tb: list[str]) -> dict[str, Any]:
    longest = max(len(ta), len(tb))
    differ = [t for t in range(longest) if (ta[t : t + 1] or None) != (tb[t : t + 1] or None)]
    return {"a": ta, "b": tb, "same": ta == tb, "differingPositions": differ}


def _token_notes(ta: list[str], tb: list[str], differ: list[int]) -> list[str]:
    if not ta or not tb or not differ:
        return []
    notes = []
    shared = [t for t in differ if t < min(len(ta), len(tb))]
    if shared:
        shown = ", ".join(f"{t} ({ta[t]!r} vs {tb[t]!r})" for t in shared[:5])
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        notes.append(
            f"The prompts differ at token positions {shown}{more}: nodes and per-token sums are "
            "aligned by position, so those rows compare different tokens."
        )
    if len(ta) != len(tb):
        longer = "a" if len(ta) > len(tb) else "b"
        notes.append(
            f"a has {len(ta)} tokens and b has {len(tb)}: positions {min(len(ta), len(tb))} to "
            f"{max(len(ta), len(tb)) - 1} exist only in {longer}."
        )
    return notes


def _side_notes(a: RunSide, b: RunSide) -> list[str]:
    notes = []
    for name, side in (("a", a), ("b", b)):
        if side.token_data is None:
            notes.append(f"{name} ({side.address}) has no result: its job is {side.status}.")
    if a.endpoint != b.endpoint:
        notes.append(
            f"a is a {a.endpoint} run and b a {b.endpoint} run: only the parts both responses "
            "have (loss, tokens, node tables of the same name) are compared."
        )
    return notes


# --- the comparison -------------------------------------------------------------------------


def _node_tables(a: RunSide, b: RunSide, tokens: list[str], sort: str | None) -> list[dict]:
    tables = []
    for name in dict.fromkeys([*a.data_by_name, *b.data_by_name]):
        da, db = a.data_by_name.get(name), b.data_by_name.get(name)
        if name in (TOKEN_SUMS, OUTPUT_LOGITS) or da is None or db is None:
            continue
        kinds = {da.get("responseDataType"), db.get("responseDataType")}
        if kinds == {DERIVED}:
            da, db = derived_scalars_as_table(da), derived_scalars_as_table(db)
        elif kinds != {TOP_K}:
            continue
        tables.append(node_table(name, da, db, tokens, sort))
    return tables


def _not_compared(a: RunSide, b: RunSide) -> list[dict[str, str]]:
    out = []
    for name in dict.fromkeys([*a.data_by_name, *b.data_by_name]):
        da, db = a.data_by_name.get(name), b.data_by_name.get(name)
        if da is None or db is None:
            if a.token_data is not None and b.token_data is not None:
                out.append({"name": name, "reason": f"only in {'a' if db is None else 'b'}"})
            continue
        kind = da.get("responseDataType")
        if kind != db.get("responseDataType"):
            out.append({"name": name, "reason": "a different kind of data in a and b"})
        elif kind in NOT_COMPARED:
            out.append({"name": name, "reason": NOT_COMPARED[kind]})
    return out


def _header(side: RunSide) -> dict[str, Any]:
    job_id, _, index = side.address.partition("/")
    return {
        "run": side.address,
        "url": f"/v1/runs/{job_id}/{index or 0}",
        "page": f"/runs/{job_id}/{index or 0}",
        "endpoint": side.endpoint,
        "model": side.model,
        "family": side.family,
        "status": side.status,
        "label": side.label,
        "tags": list(side.tags),
        "createdAt": side.created_at,
    }


def compare(
    a: RunSide, b: RunSide, *, only_diff: bool = False, sort: str | None = None
) -> dict[str, Any]:
    """The comparison of run ``a`` with run ``b`` (deltas are ``b - a``)."""
    ta, tb = _tokens(a), _tokens(b)
    tokens = token_comparison(ta, tb)
    notes = _side_notes(a, b) + _token_notes(ta, tb, tokens["differingPositions"])
    same_model = (a.model, a.model_revision) == (b.model, b.model_revision)
    tables: list[dict] = []
    if same_model:
        tables = _node_tables(a, b, ta or tb, sort)
    elif a.data_by_name and b.data_by_name:
        notes.append(
            f"a ran on {a.model} and b on {b.model}: node indices name different weights, so the "
            "node tables are not aligned; output-token logits are matched by token string."
        )
    out_a, out_b = a.data_by_name.get(OUTPUT_LOGITS), b.data_by_name.get(OUTPUT_LOGITS)
    sums_a, sums_b = a.data_by_name.get(TOKEN_SUMS), b.data_by_name.get(TOKEN_SUMS)
    data_a, data_b = a.token_data or {}, b.token_data or {}
    result = {
        "a": _header(a),
        "b": _header(b),
        "settings": settings_rows(a, b),
        "tokens": tokens,
        "loss": cell(data_a.get("loss"), data_b.get("loss")),
        "tracedValue": cell(
            data_a.get("activationValueForBackwardPass"),
            data_b.get("activationValueForBackwardPass"),
        ),
        "nodeTables": tables,
        "topOutputTokens": (
            output_tokens(out_a, out_b, by_string=not same_model) if out_a and out_b else None
        ),
        "tokenSums": token_sums(sums_a, sums_b, ta, tb) if sums_a and sums_b else None,
        "notes": notes,
        "notCompared": _not_compared(a, b),
        "onlyDiff": only_diff,
    }
    result["differs"] = [row["name"] for row in result["settings"] if not row["same"]]
    return keep_differences(result) if only_diff else result


def _unchanged(c: dict[str, Any]) -> bool:
    return c["a"] is not None and c["b"] is not None and c["delta"] == 0


def keep_differences(result: dict[str, Any]) -> dict[str, Any]:
    """Drop what is the same in both runs: equal settings, unchanged nodes, tokens and sums."""
    result["settings"] = [row for row in result["settings"] if not row["same"]]
    for table in result["nodeTables"]:
        table["rows"] = [
            r for r in table["rows"] if not all(_unchanged(c) for c in r["values"].values())
        ]
    if result["topOutputTokens"]:
        result["topOutputTokens"]["rows"] = [
            r
            for r in result["topOutputTokens"]["rows"]
            if not (_unchanged(r["logit"]) and r["rank"]["a"] == r["rank"]["b"])
        ]
    if result["tokenSums"]:
        result["tokenSums"]["rows"] = [
            r for r in result["tokenSums"]["rows"] if not all(_unchanged(c) for c in r["cells"])
        ]
    return result


def clean_twin(endpoint: str, request: dict[str, Any], index: int) -> dict[str, Any]:
    """The request of run ``index`` alone with its ablations removed: its clean baseline."""
    sub = json.loads(json.dumps(sub_request(endpoint, request, index)))
    if endpoint == "batched_tdb":
        sub["nodeAblations"] = None
        return {"subRequests": [sub]}
    sub["inferenceRequestSpec"]["ablationSpecs"] = None
    if endpoint == "batched":
        return {"inferenceSubRequests": [sub]}
    return sub
