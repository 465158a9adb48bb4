"""The audit's low items on the real processes (``actq up``; gunicorn with PostgreSQL and Redis):
an ablation value of NaN or ``1e400`` is refused at submission instead of failing the job, and
every response carries the security headers (the pages a Content-Security-Policy that lets no
script run)."""

from __future__ import annotations

import copy
import json

import pytest
import requests

from tests.conftest import OK_CASES

pytestmark = pytest.mark.slow

ABLATED = next(
    c
    for c in OK_CASES
    if c["endpoint"] == "batched_tdb" and c["request"]["subRequests"][0].get("nodeAblations")
)


@pytest.fixture(params=["embedded", "gunicorn"])
def served(request):
    name = "embedded_stack" if request.param == "embedded" else "full_stack"
    return request.getfixturevalue(name)


@pytest.mark.parametrize("value", ["NaN", "1e400", "-Infinity"])
def test_a_non_finite_ablation_value_is_refused_at_submission(served, value):
    request = copy.deepcopy(ABLATED["request"])
    request["subRequests"][0]["nodeAblations"][0]["value"] = 12345.5
    body = json.dumps(request).replace("12345.5", value)
    response = requests.post(
        f"{served.url}/v1/batched_tdb?fresh=1",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422, response.text[:300]
    assert response.json()["error"]["path"] == "subRequests.0.nodeAblations.0.value"


def test_every_response_has_the_security_headers(served):
    for path in ("/", "/runs", "/v1/jobs", "/v1/models", "/healthz", "/v1/jobs/nosuchjob"):
        response = requests.get(served.url + path, timeout=30)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY", path
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy, path
        if response.headers["Content-Type"].startswith("text/html"):
            assert "default-src 'none'" in policy and "script" not in policy, path
