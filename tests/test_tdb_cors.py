"""CORS and TDB's ``{"message": ...}`` on every response of the TDB-compatible surface
(``api.tdb_cors``): preflights, answers, and errors from authentication, rate limits, routing,
body limits and bugs, on TDB's routes and on paths actq does not have; ``/v1`` is not touched."""

from __future__ import annotations

import pytest

from models.store.keys import create_key

UI = "http://localhost:1234"
PREFLIGHT = {
    "Origin": UI,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


def _app(tmp_path, sqlite_url, golden_model_dir, **overrides):
    from api.app import create_app

    return create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": sqlite_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
            **overrides,
        }
    )


def assert_tdb_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    body = response.get_json()
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"]["message"]
    return body


@pytest.mark.parametrize(
    "path", ["/batched_tdb", "/neuron_record", "/explain", "/no_such_route", "/a/b/c"]
)
def test_preflights_of_the_surface_are_answered_with_cors(client, path):
    response = client.options(path, headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "content-type"


def test_unknown_paths_and_wrong_methods_are_tdb_errors(client):
    assert_tdb_error(
        client.post("/no_such_route", json={}, headers={"Origin": UI}, buffered=True), 404
    )
    assert_tdb_error(client.get("/batched_tdb", headers={"Origin": UI}, buffered=True), 405)


def test_v1_and_foreign_origins_get_no_cors(client):
    # a cross-origin POST off the TDB surface is refused (api.security) and gets no CORS
    response = client.post("/v1/no_such_route", json={}, headers={"Origin": UI}, buffered=True)
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "message" not in response.get_json()
    response = client.options("/v1/batched_tdb", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in response.headers
    foreign = client.post("/no_such_route", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "Access-Control-Allow-Origin" not in foreign.headers
    assert foreign.get_json()["message"]


def test_keyed_service_401_and_429_carry_cors_and_message(tmp_path, sqlite_url, golden_model_dir):
    app = _app(tmp_path, sqlite_url, golden_model_dir, rate_burst=1)
    with app.extensions["actq.sessionmaker"].begin() as session:
        _, token = create_key(session, "alice", rate_per_minute=1)
    client = app.test_client()
    assert client.options("/batched_tdb", headers=PREFLIGHT).status_code == 200
    assert_tdb_error(
        client.post("/batched_tdb", json={}, headers={"Origin": UI}, buffered=True), 401
    )
    assert_tdb_error(client.post("/model_info", headers={"Origin": UI}, buffered=True), 401)
    headers = {"Origin": UI, "Authorization": f"Bearer {token}"}
    client.post("/neuron_datasets_metadata", headers=headers, buffered=True)  # the burst of one
    body = assert_tdb_error(
        client.post("/neuron_datasets_metadata", headers=headers, buffered=True), 429
    )
    assert "requests a minute" in body["message"]


def test_payload_too_large_and_internal_errors_carry_cors(
    tmp_path, sqlite_url, golden_model_dir, monkeypatch
):
    app = _app(tmp_path, sqlite_url, golden_model_dir, max_body_bytes=100)
    client = app.test_client()
    big = {"subRequests": [{"prompt": "x" * 200}]}
    assert_tdb_error(
        client.post("/batched_tdb", json=big, headers={"Origin": UI}, buffered=True), 413
    )

    import api.tdb

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.tdb, "submit", broken)
    body = assert_tdb_error(
        client.post("/batched_tdb", json={}, headers={"Origin": UI}, buffered=True), 500
    )
    assert "a bug" not in body["message"]
