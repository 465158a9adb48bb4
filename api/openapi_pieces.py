"""The building blocks of the OpenAPI document (``api.openapi``): references to component
schemas, JSON bodies, parameters and the error answers every route may give."""

from __future__ import annotations

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def as_json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def param(name: str, schema: dict, where: str = "query", description: str = "", required=False):
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": schema,
        "description": description,
    }


ERRORS = {
    "400": as_json(ref("ErrorBody"), "the model cannot serve this request"),
    "404": as_json(ref("ErrorBody"), "unknown model or route"),
    "413": as_json(ref("ErrorBody"), "request body too large"),
    "422": as_json(ref("ErrorBody"), "the body does not parse; `path` names the field"),
    "503": as_json(ref("ErrorBody"), "the database is unavailable; retry after Retry-After"),
    "401": as_json(ref("ErrorBody"), "an API key is needed (Authorization: Bearer KEY)"),
    "429": as_json(ref("ErrorBody"), "over the key's rate limit; retry after Retry-After"),
}
