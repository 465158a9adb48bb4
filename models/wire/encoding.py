"""The JSON encoding of TDB's responses (protocol.md §1.3), so stored results are byte-compatible.

Compact separators, raw UTF-8 (no ``\\u`` escapes), floats as Python's shortest round-tripping
``repr`` (``1.0``, ``-0.0``, ``0.10000000149011612``), ints without a decimal point, and no
``NaN``/``Infinity``: a non-finite number raises ValueError, as TDB's strict encoder fails the
request. The standard library's C encoder already does all of this, so nothing here walks the
object in Python.
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Encode wire JSON types (dicts, lists, str, int, float, bool, None) as TDB writes them."""
    return _ENCODER.encode(obj)


def dumps_bytes(obj: Any) -> bytes:
    """``dumps`` as UTF-8 bytes, ready to send or store."""
    return _ENCODER.encode(obj).encode("utf-8")
