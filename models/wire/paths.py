"""Turn pydantic's validation errors into actq's 422 with a camelCase field path.

pydantic reports where an error is as a tuple of field names, list indices, dictionary keys and
union tags. Users wrote camelCase keys (or snake_case ones, which mean the same), and dictionary
keys (spec names, group ids) are data that must stay as written, so the tuple cannot be converted
piece by piece without knowing the types. ``wire_path`` walks the model's type annotations along
the location: a field name becomes its alias, a key stays itself, a union tag is dropped.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from models.errors import RequestValidationError


def validation_error(model: type[BaseModel], error: ValidationError) -> RequestValidationError:
    """The first error of ``error`` as a RequestValidationError with a readable message."""
    errors = error.errors(include_url=False)
    first = errors[0]
    message = _message(first)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    path = wire_path(model, first["loc"]) if first["type"] != "json_invalid" else None
    return RequestValidationError(message, path=path or None)


def _message(error: dict) -> str:
    text = error["msg"]
    if text.startswith("Value error, "):
        text = text[len("Value error, ") :]
    if error["type"] == "json_invalid":
        return f"malformed JSON: {error.get('ctx', {}).get('error', text)}"
    value = error.get("input")
    if error["type"] != "missing" and (value is None or isinstance(value, str | int | float)):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else "a long string"
        text += f" (got {shown})"
    return text


def wire_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The dotted wire path of ``loc`` inside ``model``, e.g. ``subRequests.0.nodeAblations``."""
    parts: list[str] = []
    current: Any = model
    for item in loc:
        current = _unwrap(current)
        current, shown = _step(current, item)
        if shown is not None:
            parts.append(shown)
    return ".".join(parts)


def _step(current: Any, item: int | str) -> tuple[Any, str | None]:
    """Follow one location item: returns the type found there and the text shown for the item."""
    if item == "[key]":  # pydantic's marker after a dictionary key that failed validation
        return current, None
    origin = typing.get_origin(current)
    args = typing.get_args(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(str(item))
        if field is not None:
            return field.annotation, field.alias or str(item)
        return Any, str(item)
    if _is_union(current):
        for member in args:
            member = _unwrap(member)
            if getattr(member, "__name__", None) == item:
                return member, None
        return current, None  # a tag of a union of plain types: not part of the path
    if origin is dict:
        return (args[1] if len(args) > 1 else Any), str(item)
    if origin in (list, tuple) and isinstance(item, int):
        return (args[0] if args else Any), str(item)
    return Any, str(item)


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and a ``None`` alternative: what remains decides how to walk."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if _is_union(annotation):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)
