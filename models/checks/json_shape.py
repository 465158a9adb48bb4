"""Bounded parsing: the raw JSON's shape is checked before the wire models build anything.

pydantic builds every element of an array (and an error object for every bad one) before any
limit on the parsed model can look at it: a 0.9 MB body of 300,000 empty sub-requests cost the
API 2.4 GB and 9 s, a 30 MB array of ones far more. ``check_json_shape`` walks the body's
structural tokens (brackets, braces, commas, colons and strings) with one compiled regular
expression, which skips numbers and literals in C, and stops at the first limit passed, so its
cost is bounded by the limits, not by the body: an array longer than its limit is refused after
reading that many elements. It builds no values, only a stack as deep as the nesting.

Limits (``models.settings``): nesting depth (``ACTQ_MAX_JSON_DEPTH``), the elements of any one
array or members of any one object (``ACTQ_MAX_JSON_ITEMS_PER_CONTAINER``), all elements and
members together (``ACTQ_MAX_JSON_ITEMS``), and the sub-request lists
(``ACTQ_MAX_SUB_REQUESTS``), which are named here so that their 422 has the same path and
message as after parsing. Malformed JSON is left to the parser, which reports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.errors import RequestValidationError

_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]', re.DOTALL)
SUB_REQUEST_KEYS = frozenset(
    {"subRequests", "sub_requests", "inferenceSubRequests", "inference_sub_requests"}
)


@dataclass(frozen=True)
class ShapeLimits:
    max_depth: int
    max_items_per_container: int
    max_items: int
    max_sub_requests: int


@dataclass
class _Container:
    is_array: bool
    path: str
    limit: int
    limit_name: str
    commas: int = 0  # the index of the current element or member (scalars are not tokens)
    key: str | None = None  # the last key of an object
    at_key: bool = True  # in an object, after '{' or ',': the next string is a key


def check_json_shape(body: bytes | bytearray | str, limits: ShapeLimits) -> None:
    """Raise a 422 naming the array or object of ``body`` that passes a limit."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    stack: list[_Container] = []
    total = 0
    for match in _TOKENS.finditer(data):
        first = match.group()[:1]
        top = stack[-1] if stack else None
        if first in b"]}":
            if stack:
                stack.pop()
        elif first == b",":
            if top is not None:
                top.commas += 1
                top.at_key = not top.is_array
                total += 1
                _check_counts(top, total, limits)
        elif first == b'"':
            if top is not None and not top.is_array and top.at_key:
                top.key, top.at_key = _key_text(match.group()), False
        elif first in b"[{":
            total += 1
            stack.append(_open(first == b"[", top, len(stack) + 1, limits))


def _open(is_array: bool, parent: _Container | None, depth: int, limits: ShapeLimits):
    path = _child_path(parent)
    if depth > limits.max_depth:
        raise RequestValidationError(
            f"the JSON is nested more than {limits.max_depth} levels deep (ACTQ_MAX_JSON_DEPTH)",
            path or None,
        )
    key = parent.key if parent is not None and not parent.is_array else None
    if is_array and key in SUB_REQUEST_KEYS:
        return _Container(True, path, limits.max_sub_requests, "ACTQ_MAX_SUB_REQUESTS")
    return _Container(
        is_array, path, limits.max_items_per_container, "ACTQ_MAX_JSON_ITEMS_PER_CONTAINER"
    )


def _child_path(parent: _Container | None) -> str:
    if parent is None:
        return ""
    step = str(parent.commas) if parent.is_array else (parent.key or "")
    return f"{parent.path}.{step}" if parent.path else step


def _check_counts(container: _Container, total: int, limits: ShapeLimits) -> None:
    if container.commas + 1 > container.limit:
        what = "sub-requests" if container.limit_name == "ACTQ_MAX_SUB_REQUESTS" else "items"
        raise RequestValidationError(
            f"more than {container.limit} {what}, the limit ({container.limit_name})",
            container.path or None,
        )
    if total > limits.max_items:
        raise RequestValidationError(
            f"the JSON has more than {limits.max_items} array elements and object members "
            "in all, the limit (ACTQ_MAX_JSON_ITEMS)",
            container.path or None,
        )


def _key_text(token: bytes) -> str:
    """An object key as written (escapes kept as is: the names actq looks for have none)."""
    return token[1:-1].decode("utf-8", errors="replace")
