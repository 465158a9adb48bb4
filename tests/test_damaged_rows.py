"""One damaged row (a request whose stored JSON no longer parses, a response blob that does not
inflate) never fails an owner's whole history: lists skip it and name it in ``skipped``, and
the routes that need the damaged data answer a ``damaged_row`` error that names the job.
The rows are damaged in the database directly, as a disk or a hand edit would."""

from __future__ import annotations

from sqlalchemy import text

from tests.runs_support import golden_pair, store_finished


def _three_jobs(app_sessions) -> list[str]:
    pair = golden_pair()
    return [store_finished(app_sessions, pair["request"], pair["response"]) for _ in range(3)]


def _damage(app_sessions, column: str, value, job_id: str) -> None:
    with app_sessions.begin() as session:
        session.execute(
            text(f"UPDATE jobs SET {column} = :v WHERE id = :i"), {"v": value, "i": job_id}
        )


def test_a_request_that_no_longer_parses_is_skipped_and_reported(client, app_sessions):
    bad, *good = _three_jobs(app_sessions)
    _damage(app_sessions, "request", "not json{", bad)  # SQLite keeps any text in a JSON column
    jobs = client.get("/v1/jobs")
    assert jobs.status_code == 200
    body = jobs.get_json()
    assert {j["id"] for j in body["jobs"]} == set(good)
    assert [s["id"] for s in body["skipped"]] == [bad]
    assert "request" in body["skipped"][0]["reason"]
    runs = client.get("/v1/runs").get_json()
    assert {r["jobId"] for r in runs["runs"]} == set(good)
    assert {s["id"] for s in runs["skipped"]} == {f"{bad}/0", f"{bad}/1"}
    page = client.get("/runs")
    assert page.status_code == 200 and f"{bad}/0" in page.get_data(as_text=True)
    assert client.get(f"/v1/jobs/{bad}").status_code == 200  # its status still shows


def test_a_response_that_does_not_inflate_answers_damaged_row(client, app_sessions):
    bad, good, _ = _three_jobs(app_sessions)
    _damage(app_sessions, "response", b"\x00\x11\x22\x33", bad)
    assert client.get("/v1/jobs").get_json()["skipped"] == []  # the list reads no response
    for path in (f"/v1/jobs/{bad}/result", f"/v1/compare?a={bad}/0&b={good}/1"):
        answer = client.get(path)
        assert answer.status_code == 500, path
        error = answer.get_json()["error"]
        assert error["type"] == "damaged_row" and bad in error["message"]
    assert client.get(f"/v1/compare?a={good}/0&b={good}/1").status_code == 200


def test_prompt_contains_nul_is_a_422_on_sqlite(client, app_sessions):
    _three_jobs(app_sessions)
    for route in ("/v1/jobs", "/v1/runs"):
        answer = client.get(f"{route}?promptContains=%00")
        assert answer.status_code == 422
        assert answer.get_json()["error"]["path"] == "promptContains"
