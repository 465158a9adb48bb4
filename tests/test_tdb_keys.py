"""A key in the path (``/tdb/KEY/...``, ``api.tdb_keys``) for TDB's unmodified UI: it opens the
TDB routes of a keyed service and nothing else, and the key never reaches a log line."""

from __future__ import annotations

import logging

from api.tdb_keys import KeyInPath, RedactKeys
from models.store.keys import create_key

UI = {"Origin": "http://localhost:1234"}


def _keyed(tmp_path, sqlite_url, golden_model_dir):
    from api.app import create_app

    app = create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": sqlite_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
        }
    )
    with app.extensions["actq.sessionmaker"].begin() as session:
        _, token = create_key(session, "tdb-ui")
    return app, token


def test_the_key_in_the_path_opens_the_tdb_routes_only(tmp_path, sqlite_url, golden_model_dir):
    app, token = _keyed(tmp_path, sqlite_url, golden_model_dir)
    client = app.test_client()
    assert client.post("/neuron_datasets_metadata", headers=UI).status_code == 401
    response = client.post(f"/tdb/{token}/neuron_datasets_metadata", headers=UI)
    assert response.status_code == 200 and response.get_json() == []
    assert response.headers["Access-Control-Allow-Origin"] == UI["Origin"]
    invalid = client.post(
        f"/tdb/{token}/batched_tdb", json={"subRequests": 3}, headers=UI, buffered=True
    )
    assert invalid.status_code == 422 and invalid.get_json()["message"]  # past authentication
    preflight = client.options(
        f"/tdb/{token}/batched_tdb", headers={**UI, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == UI["Origin"]
    wrong = client.post("/tdb/not-a-key/neuron_datasets_metadata", headers=UI)
    assert wrong.status_code == 401 and wrong.get_json()["message"]
    assert wrong.headers["Access-Control-Allow-Origin"] == UI["Origin"]
    for path in ("/v1/jobs", "/v1/models", "/runs"):
        refused = client.get(f"/tdb/{token}{path}", headers=UI)
        assert refused.status_code == 404, path
        assert "TDB's routes only" in refused.get_json()["message"]
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_key_never_reaches_the_logs():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return []

    environ = {"PATH_INFO": "/tdb/sekrit/batched_tdb", "RAW_URI": "/tdb/sekrit/batched_tdb?x=1"}
    KeyInPath(app)(environ, None)
    assert seen["PATH_INFO"] == "/batched_tdb"
    assert seen["HTTP_AUTHORIZATION"] == "Bearer sekrit"
    assert seen["RAW_URI"] == "/tdb/***/batched_tdb?x=1"
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        "x",
        1,
        '%s - "%s" %s',
        ("1.2.3.4", "POST /tdb/sekrit/x", 200),
        None,
    )
    RedactKeys().filter(record)
    assert "sekrit" not in record.getMessage() and "/tdb/***/x" in record.getMessage()
