"""The fields of a request body that actq does not know, so that a misspelling is not silent.

TDB ignores unknown keys, and actq keeps accepting TDB's bodies, but a misspelled optional field
(``nodeAblation`` for ``nodeAblations``) would otherwise run the clean request without a word.
The parsed request, dumped as wire JSON (``to_wire``), has every field actq knows at every level:
a key of the body that is not at the same place in the dump was ignored.
"""

from __future__ import annotations

import json
from typing import Any


def unknown_fields(body: bytes | bytearray | str | dict | None, wire: Any) -> list[str]:
    """Dotted paths (``subRequests.0.nodeAblation``) of the body's keys that ``wire`` lacks."""
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except ValueError:
            return []
    found: list[str] = []
    _walk(body, wire, "", found)
    return found


def _walk(raw: Any, known: Any, path: str, found: list[str]) -> None:
    if isinstance(raw, dict) and isinstance(known, dict):
        for key, value in raw.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in known:
                found.append(where)
            else:
                _walk(value, known[key], where, found)
    elif isinstance(raw, list) and isinstance(known, list) and len(raw) == len(known):
        for index, (value, dumped) in enumerate(zip(raw, known, strict=True)):
            _walk(value, dumped, f"{path}.{index}" if path else str(index), found)


def unknown_field_warnings(body: bytes | str | dict | None, wire: Any) -> list[dict[str, str]]:
    """The job's ``warnings``: one ``{"type", "path", "message"}`` per unknown field."""
    return [
        {
            "type": "unknown_field",
            "path": path,
            "message": f"unknown field {path.rsplit('.', 1)[-1]!r} at {path!r} was ignored "
            "(misspelled? TDB ignores unknown fields too)",
        }
        for path in unknown_fields(body, wire)
    ]
