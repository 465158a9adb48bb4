"""The raw JSON's shape check (models.checks.json_shape): each limit, the path it names, and
strings that contain brackets and commas, which are not structure."""

from __future__ import annotations

import json

import pytest

from models.checks.json_shape import ShapeLimits, check_json_shape
from models.errors import RequestValidationError

LIMITS = ShapeLimits(max_depth=4, max_items_per_container=5, max_items=12, max_sub_requests=2)


def _refusal(value) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as caught:
        check_json_shape(json.dumps(value).encode(), LIMITS)
    return caught.value


@pytest.mark.parametrize(
    "value",
    [
        {"subRequests": [{}, {}], "x": [1, 2, 3, 4, 5]},
        {"s": "[[[[[[,,,,,,,,]]]]]]", "t": ['{"a": [1,2,3,4,5,6]}']},
        [[[1]]],
        "a string",
        [],
    ],
)
def test_shapes_within_the_limits_pass(value):
    check_json_shape(json.dumps(value).encode(), LIMITS)


def test_each_limit_names_its_array():
    deep = _refusal({"a": {"b": [[{"c": 1}]]}})
    assert (deep.path, "ACTQ_MAX_JSON_DEPTH" in deep.message) == ("a.b.0.0", True)
    long = _refusal({"a": [0, {"b": list(range(6))}]})
    assert (long.path, "ACTQ_MAX_JSON_ITEMS_PER_CONTAINER" in long.message) == ("a.1.b", True)
    subs = _refusal({"inferenceSubRequests": [{}, {}, {}]})
    assert (subs.path, "ACTQ_MAX_SUB_REQUESTS" in subs.message) == ("inferenceSubRequests", True)
    total = _refusal({"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2, 3, 4]})
    assert "ACTQ_MAX_JSON_ITEMS" in total.message


def test_a_long_top_level_array_is_refused_after_its_limit():
    refused = _refusal(list(range(100)))
    assert refused.path is None and "more than 5 items" in refused.message
