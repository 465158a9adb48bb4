"""NUL characters and over-long label or tag edits are 4xx naming the field on both databases
(on PostgreSQL they were 500s: psycopg's DataError, and a write before the length check), with
the audit's reproductions as input, on ``actq up`` (SQLite) and gunicorn with PostgreSQL."""

from __future__ import annotations

import copy

import pytest
import requests

from tests.conftest import OK_CASES

pytestmark = pytest.mark.slow

DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")


@pytest.fixture(params=["embedded", "gunicorn"])
def served(request):
    name = "embedded_stack" if request.param == "embedded" else "full_stack"
    return request.getfixturevalue(name)


@pytest.fixture
def finished(served) -> str:
    response = requests.post(f"{served.url}/v1/{DS['endpoint']}?wait=60", json=DS["request"])
    assert response.status_code == 200, response.text[:300]
    return requests.get(f"{served.url}/v1/jobs?limit=1", timeout=30).json()["jobs"][0]["id"]


def _refused(response, path) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]["path"] == path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("/v1/jobs?tag=%00", "tag"),
        ("/v1/jobs?label=a%00", "label"),
        ("/v1/runs?promptContains=%00", "promptContains"),
        ("/v1/jobs/a%00b", "id"),
        ("/v1/runs/a%00b/0", "id"),
    ],
)
def test_a_nul_in_a_filter_or_an_id_is_a_422(served, url, path):
    _refused(requests.get(served.url + url, timeout=30), path)


def test_a_nul_in_a_prompt_is_a_422(served):
    request = copy.deepcopy(DS["request"])
    request["inferenceRequestSpec"]["prompt"] = "a\u0000b"
    response = requests.post(f"{served.url}/v1/{DS['endpoint']}?fresh=1", json=request)
    _refused(response, "inferenceRequestSpec.prompt")


def test_a_nul_in_an_unknown_key_is_a_422(served):
    """The fuzzer's case: an unknown key is kept in the job's warnings, so a NUL in it was a 500."""
    request = {"\u0000": None, "inferenceSubRequests": [{"inferenceRequestSpec": {"prompt": "0"}}]}
    response = requests.post(f"{served.url}/v1/batched?fresh=1", json=request)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]["type"] == "validation_error"


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        ({"label": "x" * 5000}, "label"),
        ({"addTags": ["t" * 500]}, "tag"),
        ({"tags": ["t" * 500]}, "tag"),
        ({"label": "a\u0000"}, "label"),
        ({"addTags": ["a\u0000"]}, "tag"),
    ],
    ids=["long-label", "long-added-tag", "long-tag", "nul-label", "nul-tag"],
)
def test_a_bad_label_or_tag_edit_is_a_422_and_changes_nothing(served, finished, edit, path):
    for url in (f"/v1/jobs/{finished}", f"/v1/runs/{finished}/0"):
        _refused(requests.patch(served.url + url, json=edit, timeout=30), path)
    after = requests.get(f"{served.url}/v1/runs/{finished}/0", timeout=30).json()
    assert (after["label"], after["tags"]) == (None, [])
