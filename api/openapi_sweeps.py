"""The sweep routes' entries in ``/openapi.json`` (``api.sweeps``): the body is
``models.wire.sweeps.SweepRequest``, the answers ``api.sweep_schemas``' models, the same classes
the routes parse with and answer through."""

from __future__ import annotations

from api.openapi_pieces import ERRORS, as_json, param, ref
from api.sweep_schemas import SweepTable, SweepView
from models.wire.sweeps import SweepRequest

SWEEP_MODELS = (
    (SweepRequest, "validation"),
    (SweepView, "serialization"),
    (SweepTable, "serialization"),
)

SWEEP_ID = param("id", {"type": "string"}, where="path", required=True)
FOUND = {"404": ERRORS["404"], "422": ERRORS["422"]}


def sweep_paths(keys: dict) -> dict:
    body = keys[(SweepRequest, "validation")]
    csv = {"schema": {"type": "string", "description": "a header and a row per grid point"}}
    return {
        "/v1/sweeps": {
            "post": {
                "operationId": "submit-sweep",
                "summary": "Submit a sweep: a base request run under every ablation of a grid",
                "parameters": [param("model", {"type": "string"}, description="served model name")],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "202": as_json(ref("SweepView"), "queued; poll `url`"),
                    **ERRORS,
                },
            }
        },
        "/v1/sweeps/{id}": {
            "get": {
                "operationId": "get-sweep",
                "summary": "A sweep, its progress and a row per grid point (ID.csv: as CSV)",
                "parameters": [
                    SWEEP_ID,
                    param(
                        "format",
                        {"type": "string", "enum": ["json", "csv"]},
                        description="csv: the table as CSV (as ID.csv)",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the sweep (JSON), or its table (CSV)",
                        "content": {
                            "application/json": {"schema": ref("SweepTable")},
                            "text/csv": csv,
                        },
                    },
                    **FOUND,
                },
            }
        },
        "/v1/sweeps/{id}/cancel": {
            "post": {
                "operationId": "cancel-sweep",
                "summary": "Cancel the sweep's points not yet run",
                "parameters": [SWEEP_ID],
                "responses": {
                    "200": as_json(ref("SweepView"), "canceled (nothing of it had started)"),
                    "202": as_json(ref("SweepView"), "started: it stops between its passes"),
                    "409": as_json(ref("ErrorBody"), "the sweep already ended"),
                    **FOUND,
                },
            }
        },
    }
