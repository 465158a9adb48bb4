"""The OpenAPI 3.1 document, generated from the pydantic models of the wire protocol and the API.

Request bodies reference the protocol's request models, TDB responses its response models, and the
job bodies the models of ``api.schemas``; one path entry per route. Built once per process.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from api.openapi_pieces import ERRORS, REF
from api.openapi_pieces import as_json as _json
from api.openapi_pieces import param as _param
from api.openapi_pieces import ref as _ref
from api.openapi_sweeps import SWEEP_MODELS, sweep_paths
from api.run_views import BaselineView, RunDetail, RunList
from api.schemas import ErrorBody, Health, JobAccepted, JobList, JobView, ModelList
from models.store.lifecycle import ENDPOINTS, JobStatus
from models.wire.protocol import REQUEST_MODELS, RESPONSE_MODELS


def _schemas() -> tuple[dict[tuple, dict], dict[str, Any]]:
    inputs = [(m, "validation") for m in REQUEST_MODELS.values()]
    outputs = [(m, "serialization") for m in RESPONSE_MODELS.values()]
    ours = [
        (m, "serialization")
        for m in (ErrorBody, Health, JobAccepted, JobList, JobView, ModelList)
        + (BaselineView, RunDetail, RunList)
    ] + list(SWEEP_MODELS)
    keys, top = models_json_schema(inputs + outputs + ours, ref_template=REF, by_alias=True)
    return keys, top.get("$defs", {})


def _submit_path(endpoint: str, keys: dict) -> dict:
    params = [
        _param("model", {"type": "string"}, description="served model name (default: the first)"),
        _param(
            "wait", {"type": "number", "minimum": 0}, description="seconds to wait for the result"
        ),
        _param("label", {"type": "string", "maxLength": 200}),
        _param("tag", {"type": "array", "items": {"type": "string", "maxLength": 100}}),
    ]
    op: dict[str, Any] = {
        "operationId": f"submit-{endpoint}",
        "summary": f"Submit a {endpoint} job",
        "parameters": params,
        "responses": {
            "202": _json(_ref("JobAccepted"), "queued; poll `url`"),
            "200": _json(_resp_schema(endpoint, keys), "finished within `wait`: the TDB response"),
            **ERRORS,
        },
    }
    if endpoint in REQUEST_MODELS:
        body = keys[(REQUEST_MODELS[endpoint], "validation")]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {"post": op}


def _resp_schema(endpoint: str, keys: dict) -> dict:
    return keys[(RESPONSE_MODELS[endpoint], "serialization")]


def _tdb_path(endpoint: str, keys: dict) -> dict:
    op: dict[str, Any] = {
        "operationId": f"inference-{endpoint}",
        "summary": f"TDB-compatible {endpoint}: waits and answers as TDB's server",
        "parameters": [_param("model", {"type": "string"})],
        "responses": {"200": _json(_resp_schema(endpoint, keys), "the TDB response"), **ERRORS},
    }
    if endpoint in REQUEST_MODELS:
        body = keys[(REQUEST_MODELS[endpoint], "validation")]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {"post": op}


ABLATES = _param(
    "ablates",
    {"type": "array", "items": {"type": "string"}},
    description="runs ablating this node: TYPE:LAYER:INDICES (e.g. mlp_neuron:3:2,100) or a JSON "
    "node index; repeatable",
)
RUN_ADDRESS = [
    _param("job", {"type": "string"}, where="path", required=True),
    _param("n", {"type": "integer", "minimum": 0}, where="path", required=True),
]
EDIT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "label": {"type": ["string", "null"], "maxLength": 200},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 100}},
                    "addTags": {"type": "array", "items": {"type": "string", "maxLength": 100}},
                    "removeTags": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            }
        }
    },
}


def _run_paths() -> dict:
    """Run history, label/tag edits, baselines and comparison (api.runs)."""
    history = [
        _param("model", {"type": "string"}),
        _param("prompt", {"type": "string"}, description="exact prompt"),
        _param("promptContains", {"type": "string"}),
        _param("samePromptAs", {"type": "string"}, description="a run, JOB/N"),
        _param("sameAblationsAs", {"type": "string"}, description="a run, JOB/N"),
        _param("hasAblations", {"type": "boolean"}),
        ABLATES,
        _param("tag", {"type": "array", "items": {"type": "string"}}),
        _param("label", {"type": "string"}),
        _param("status", {"type": "string", "enum": [s.value for s in JobStatus]}),
        _param("endpoint", {"type": "string", "enum": list(ENDPOINTS)}),
        _param("since", {"type": "string", "format": "date-time"}),
        _param("until", {"type": "string", "format": "date-time"}),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
        _param("cursor", {"type": "string"}),
    ]
    found = {"404": ERRORS["404"], "422": ERRORS["422"]}
    run = _json(_ref("RunDetail"), "the run, with its own sub-request")
    comparison = {"type": "object", "description": "settings, loss, node tables, tokens, notes"}
    return {
        "/v1/runs": {
            "get": {
                "operationId": "list-runs",
                "parameters": history,
                "responses": {"200": _json(_ref("RunList"), "newest first"), "422": ERRORS["422"]},
            }
        },
        "/v1/runs/{job}/{n}": {
            "get": {
                "operationId": "get-run",
                "parameters": RUN_ADDRESS,
                "responses": {"200": run, **found},
            },
            "patch": {
                "operationId": "edit-run",
                "parameters": RUN_ADDRESS,
                "requestBody": EDIT_BODY,
                "responses": {"200": run, **found},
            },
        },
        "/v1/runs/{job}/{n}/baseline": {
            "get": {
                "operationId": "get-baseline",
                "parameters": RUN_ADDRESS,
                "responses": {"200": _json(_ref("BaselineView"), "the newest clean twin"), **found},
            },
            "post": {
                "operationId": "submit-baseline",
                "parameters": RUN_ADDRESS,
                "responses": {
                    "202": _json(_ref("JobAccepted"), "the clean twin, queued"),
                    "400": ERRORS["400"],
                    **found,
                },
            },
        },
        "/v1/compare": {
            "get": {
                "operationId": "compare-runs",
                "parameters": [
                    _param(
                        "a", {"type": "string"}, required=True, description="a run, JOB/N or JOB"
                    ),
                    _param(
                        "b", {"type": "string"}, required=True, description="a run, JOB/N or JOB"
                    ),
                    _param("onlyDiff", {"type": "boolean"}),
                    _param(
                        "sort", {"type": "string"}, description="a group to sort the node tables by"
                    ),
                    _param("top", {"type": "integer", "minimum": 1}),
                ],
                "responses": {"200": _json(comparison, "the comparison of a and b"), **found},
            }
        },
    }


def _job_paths() -> dict:
    job_id = _param("id", {"type": "string"}, where="path", required=True)
    wait = _param("wait", {"type": "number", "minimum": 0})
    statuses = [s.value for s in JobStatus]
    history = [
        _param("model", {"type": "string"}),
        _param("status", {"type": "string", "enum": statuses}),
        _param("endpoint", {"type": "string", "enum": list(ENDPOINTS)}),
        _param("prompt", {"type": "string"}, description="exact prompt of a run"),
        _param("promptContains", {"type": "string"}, description="substring of a run's prompt"),
        _param("tag", {"type": "array", "items": {"type": "string"}}),
        _param("label", {"type": "string"}),
        _param("hasAblations", {"type": "boolean"}),
        ABLATES,
        _param("since", {"type": "string", "format": "date-time"}),
        _param("until", {"type": "string", "format": "date-time"}),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
        _param("cursor", {"type": "string"}),
    ]
    not_found = {"404": ERRORS["404"], "422": ERRORS["422"]}
    return {
        "/v1/jobs": {
            "get": {
                "operationId": "list-jobs",
                "parameters": history,
                "responses": {"200": _json(_ref("JobList"), "newest first"), "422": ERRORS["422"]},
            }
        },
        "/v1/jobs/{id}": {
            "get": {
                "operationId": "get-job",
                "parameters": [job_id, wait],
                "responses": {"200": _json(_ref("JobView"), "the job"), **not_found},
            },
            "patch": {
                "operationId": "edit-job",
                "parameters": [job_id],
                "requestBody": EDIT_BODY,
                "responses": {"200": _json(_ref("JobView"), "the job, relabelled"), **not_found},
            },
        },
        "/v1/jobs/{id}/result": {
            "get": {
                "operationId": "get-job-result",
                "parameters": [job_id, wait],
                "responses": {
                    "200": {
                        "description": "the TDB response, exactly as TDB writes it",
                        "content": {"application/json": {"schema": {}}},
                    },
                    "202": _json(_ref("JobView"), "still pending"),
                    **not_found,
                },
            }
        },
        "/v1/jobs/{id}/cancel": {
            "post": {
                "operationId": "cancel-job",
                "parameters": [job_id],
                "responses": {
                    "200": _json(_ref("JobView"), "canceled (it was queued, or already canceled)"),
                    "202": _json(_ref("JobView"), "started: it stops at its next stage boundary"),
                    "409": _json(_ref("ErrorBody"), "the job already finished or failed"),
                    **not_found,
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "list-models",
                "responses": {"200": _json(_ref("ModelList"), "served models")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "responses": {
                    "200": _json(_ref("Health"), "alive"),
                    "503": _json(_ref("Health"), "database unreachable"),
                },
            }
        },
    }


@functools.cache
def openapi_document() -> dict:
    keys, components = _schemas()
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        paths[f"/v1/{endpoint}"] = _submit_path(endpoint, keys)
    for endpoint in ENDPOINTS:
        paths[f"/{endpoint}"] = _tdb_path(endpoint, keys)
    paths.update(_job_paths())
    paths.update(_run_paths())
    paths.update(sweep_paths(keys))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "actq",
            "version": "1",
            "description": "Asynchronous activation server speaking TDB's wire protocol.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
