"""API keys: stored as hashes, required once one exists, each owner sees only its own jobs, runs,
comparisons and pages (admin sees all), per-key rate limits, and an open service that serves this
machine only."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
import requests

from models.store.keys import create_key
from models.store.tables import ApiKey, Job
from tests.conftest import OK_CASES, run_actq
from tests.stack import Stack, free_port, healthy, wait_until
from worker.execution import execute_job

TDB = next(c for c in OK_CASES if c["name"].startswith("061"))
DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")


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


def _keys(app, *specs) -> dict[str, str]:
    """Make keys ``(name, admin, rate)``; returns name -> Authorization header value."""
    tokens = {}
    with app.extensions["actq.sessionmaker"].begin() as session:
        for name, admin, rate in specs:
            _, token = create_key(session, name, admin=admin, rate_per_minute=rate)
            tokens[name] = f"Bearer {token}"
    return tokens


@pytest.fixture
def keyed(tmp_path, db_url, golden_model_dir):
    """The app on SQLite and on PostgreSQL with keys alice, bob and root (admin)."""
    app = _app(tmp_path, db_url, golden_model_dir)
    keys = _keys(app, ("alice", False, None), ("bob", False, None), ("root", True, None))
    yield app, keys
    app.extensions["actq.engine"].dispose()


def _as(app, auth: str | None):
    client = app.test_client()
    if auth:
        client.environ_base["HTTP_AUTHORIZATION"] = auth
    return client


def test_open_service_needs_no_key_but_answers_local_clients_only(client):
    assert client.get("/v1/jobs").status_code == 200
    remote = client.get("/v1/jobs", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 401
    assert "local clients only" in remote.get_json()["error"]["message"]


def test_with_keys_every_route_but_health_and_docs_needs_one(keyed):
    app, keys = keyed
    anonymous, forged = _as(app, None), _as(app, "Bearer actq_not-a-key")
    for client in (anonymous, forged):
        for method, url in (("get", "/v1/jobs"), ("post", "/batched_tdb"), ("get", "/runs")):
            response = getattr(client, method)(url)
            assert response.status_code == 401, url
            assert response.get_json()["error"]["type"] == "unauthorized"
            assert "Bearer" in response.headers["WWW-Authenticate"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
    assert _as(app, keys["alice"]).get("/v1/jobs").status_code == 200


def test_keys_are_stored_only_as_sha256_hashes(keyed):
    app, keys = keyed
    with app.extensions["actq.sessionmaker"]() as session:
        rows = session.query(ApiKey).all()
        stored = " ".join(str(getattr(r, c.key)) for r in rows for c in ApiKey.__table__.columns)
    for auth in keys.values():
        token = auth.removeprefix("Bearer ")
        assert token.startswith("actq_") and len(token) > 40
        assert token not in stored
        assert hashlib.sha256(token.encode()).hexdigest() in stored


def test_a_browser_may_send_the_key_as_basic_password(keyed):
    app, keys = keyed
    token = keys["alice"].removeprefix("Bearer ")
    basic = "Basic " + base64.b64encode(f"alice:{token}".encode()).decode()
    assert _as(app, basic).get("/runs").status_code == 200


def _run(app, job_id, engine_model) -> None:
    sessions = app.extensions["actq.sessionmaker"]
    assert execute_job(sessions, job_id, model=lambda: engine_model, worker="w") == "finished"


def test_each_owner_sees_only_its_own_jobs_runs_comparisons_and_pages(keyed, engine_model):
    app, keys = keyed
    alice, bob, root = (_as(app, keys[n]) for n in ("alice", "bob", "root"))
    a = alice.post("/v1/batched_tdb?label=mine&tag=t", json=TDB["request"]).get_json()["id"]
    b = bob.post("/v1/derived_scalars?tag=t", json=DS["request"]).get_json()["id"]
    _run(app, a, engine_model)
    with app.extensions["actq.sessionmaker"]() as session:
        assert session.get(Job, a).owner == "alice" and session.get(Job, b).owner == "bob"

    hidden = [
        ("get", f"/v1/jobs/{a}"),
        ("get", f"/v1/jobs/{a}/result"),
        ("post", f"/v1/jobs/{a}/cancel"),
        ("get", f"/v1/runs/{a}/1"),
        ("get", f"/v1/compare?a={a}/0&b={a}/1"),
        ("patch", f"/v1/jobs/{a}"),
        ("get", f"/runs/{a}/0"),
        ("get", f"/compare?a={a}/0&b={a}/1"),
    ]
    for method, url in hidden:
        kwargs = {"json": {"label": "stolen"}} if method == "patch" else {}
        assert getattr(bob, method)(url, **kwargs).status_code == 404, url
        assert getattr(alice, method)(url, **kwargs).status_code != 404, url

    def jobs(client, query="") -> set[str]:
        return {job["id"] for job in client.get(f"/v1/jobs{query}").get_json()["jobs"]}

    def runs(client, query="") -> set[str]:
        return {run["jobId"] for run in client.get(f"/v1/runs{query}").get_json()["runs"]}

    assert (jobs(bob), jobs(alice), jobs(root)) == ({b}, {a}, {a, b})
    assert (jobs(bob, "?tag=t"), jobs(root, "?tag=t")) == ({b}, {a, b})
    assert (runs(bob), runs(alice), runs(root)) == ({b}, {a}, {a, b})
    assert (runs(bob, "?tag=t"), runs(root, "?tag=t")) == ({b}, {a, b})
    assert runs(bob, "?hasAblations=true&status=finished") == set()
    assert runs(alice, "?hasAblations=true&status=finished") == {a}
    assert a not in bob.get("/runs").get_data(as_text=True)
    assert a in root.get("/runs").get_data(as_text=True)
    assert root.get(f"/v1/compare?a={a}/0&b={a}/1").status_code == 200


def test_an_identical_request_of_another_owner_is_run_for_them(keyed, engine_model):
    app, keys = keyed
    alice, bob = _as(app, keys["alice"]), _as(app, keys["bob"])
    first = alice.post("/v1/derived_scalars", json=DS["request"]).get_json()["id"]
    _run(app, first, engine_model)
    again = alice.post("/v1/derived_scalars", json=DS["request"]).get_json()
    theirs = bob.post("/v1/derived_scalars", json=DS["request"]).get_json()
    assert again["status"] == "finished"  # answered from alice's own earlier result
    assert theirs["status"] == "queued"  # bob's is not answered from alice's


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_rate_limit_answers_429_with_retry_after_per_key(
    request, tmp_path, sqlite_url, golden_model_dir, store
):
    broker = {}
    if store == "redis":
        broker["broker_url"] = request.getfixturevalue("redis_url")
    app = _app(tmp_path, sqlite_url, golden_model_dir, rate_burst=3, **broker)
    keys = _keys(app, ("slow", False, 6.0), ("other", False, None))
    slow, other = _as(app, keys["slow"]), _as(app, keys["other"])
    assert [slow.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
    limited = slow.get("/v1/jobs")
    assert limited.status_code == 429
    assert limited.get_json()["error"]["type"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 10  # one request per 10 s at 6 a minute
    assert other.get("/v1/jobs").status_code == 200  # each key has its own bucket
    assert slow.get("/healthz").status_code == 200  # liveness is never limited


def test_keys_command_creates_lists_and_revokes(tmp_path):
    env = {**os.environ, "ACTQ_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"}
    made = run_actq("keys", "create", "alice", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.decode().strip()
    assert token.startswith("actq_") and "\n" not in token
    assert run_actq("keys", "create", "alice", env=env).returncode == 2  # one active per name
    assert run_actq("keys", "create", "root", "--admin", env=env).returncode == 0
    listing = run_actq("keys", "list", env=env).stdout.decode()
    assert "alice" in listing and "root" in listing and token not in listing
    revoked = run_actq("keys", "revoke", "alice", env=env)
    assert revoked.returncode == 0 and b"revoked alice" in revoked.stderr
    lines = [line for line in run_actq("keys", "list", env=env).stdout.decode().splitlines()]
    alice = next(line for line in lines if " alice " in line)
    assert alice.split()[-1] != "-"  # shows when it was revoked


def test_safe_bind_keeps_an_open_service_on_loopback(tmp_path, sqlite_url):
    from api.auth import safe_bind
    from models.settings import Settings

    settings = Settings(database_url=sqlite_url, data_dir=tmp_path)
    assert safe_bind(settings, "0.0.0.0")[0] == "127.0.0.1"
    assert safe_bind(settings, "::1")[0] == "::1"
    assert safe_bind(settings.model_copy(update={"allow_open_bind": True}), "0.0.0.0")[0] == (
        "0.0.0.0"
    )
    from models.store.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine).begin() as session:
        create_key(session, "ops", admin=True)
    engine.dispose()
    assert safe_bind(settings, "0.0.0.0") == (
        "0.0.0.0",
        "actq: API keys are required (Authorization: Bearer KEY)",
    )


def test_actq_api_without_keys_binds_loopback_and_says_so(tmp_path, sqlite_url, golden_model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(
        ACTQ_DATABASE_URL=sqlite_url,
        ACTQ_DATA_DIR=str(tmp_path),
        ACTQ_BROKER_URL=f"filesystem://{tmp_path / 'broker'}",
        ACTQ_MODEL=str(golden_model_dir),
    )
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=tmp_path)
    try:
        api = stack.add("api", "api", "--bind", f"0.0.0.0:{port}", "--workers", "1")
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        assert "binds 127.0.0.1 (loopback only) instead of 0.0.0.0" in api.log()
        assert f"Listening at: http://127.0.0.1:{port}" in api.log()
        assert requests.get(f"{stack.url}/v1/jobs", timeout=5).status_code == 200
    finally:
        stack.stop()


def test_the_client_sends_the_key_from_the_environment(monkeypatch):
    from api.client import Client

    monkeypatch.setenv("ACTQ_API_KEY", "actq_from-env")
    assert Client("http://x").http.headers["Authorization"] == "Bearer actq_from-env"
    assert Client("http://x", key="actq_k").http.headers["Authorization"] == "Bearer actq_k"
    monkeypatch.delenv("ACTQ_API_KEY")
    assert "Authorization" not in Client("http://x").http.headers
