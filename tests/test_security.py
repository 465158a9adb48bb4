"""Cross-site requests and DNS rebinding (api.security), with the audit's reproductions as input:
a page on another origin creating a job with a ``no-cors`` fetch (JSON as ``text/plain``),
canceling one with a body-less POST, editing a run and submitting a baseline with plain HTML
forms, and reading ``/v1/jobs`` under a rebinding host name. On the real processes (``actq up``,
gunicorn with PostgreSQL and Redis) and, for the settings and keys, on the app."""

from __future__ import annotations

import time

import pytest
import requests

from models.store.keys import create_key
from tests.conftest import OK_CASES

DS = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
TDB = next(c for c in OK_CASES if c["endpoint"] == "batched_tdb")
EVIL = "http://attacker.example"


@pytest.fixture(params=["embedded", "gunicorn"])
def served(request):
    name = "embedded_stack" if request.param == "embedded" else "full_stack"
    return request.getfixturevalue(name)


def _finished_job(stack) -> str:
    response = requests.post(f"{stack.url}/v1/{DS['endpoint']}?wait=60", json=DS["request"])
    assert response.status_code == 200, response.text[:300]
    jobs = requests.get(f"{stack.url}/v1/jobs?limit=1", timeout=30).json()["jobs"]
    return jobs[0]["id"]


def _count(stack) -> int:
    return len(requests.get(f"{stack.url}/v1/jobs?limit=500", timeout=30).json()["jobs"])


@pytest.mark.slow
def test_a_no_cors_fetch_from_another_origin_creates_no_job(served):
    before = _count(served)
    body = __import__("json").dumps(DS["request"])
    url = f"{served.url}/v1/{DS['endpoint']}?fresh=1"
    as_text = {"Content-Type": "text/plain;charset=UTF-8"}
    cross = requests.post(url, data=body, headers={**as_text, "Origin": EVIL}, timeout=30)
    assert (cross.status_code, cross.json()["error"]["type"]) == (403, "forbidden_origin")
    referred = requests.post(url, data=body, headers={**as_text, "Referer": f"{EVIL}/x"})
    assert referred.status_code == 403
    no_origin = requests.post(url, data=body, headers=as_text, timeout=30)
    assert (no_origin.status_code, no_origin.json()["error"]["type"]) == (
        415,
        "unsupported_media_type",
    )
    assert _count(served) == before
    own = requests.post(url, json=DS["request"], headers={"Origin": served.url}, timeout=30)
    assert own.status_code == 202, own.text[:300]


@pytest.mark.slow
def test_no_response_names_the_server_s_version(served):
    for path in ("/healthz", "/v1/jobs", "/no-such-page"):
        server = requests.get(f"{served.url}{path}", timeout=30).headers.get("Server", "")
        assert server in ("", "actq", "gunicorn"), server  # werkzeug said Werkzeug/3.1 Python/3.11


@pytest.mark.slow
def test_a_body_less_cancel_from_another_origin_is_refused(served):
    job_id = requests.post(
        f"{served.url}/v1/{DS['endpoint']}?fresh=1", json=DS["request"], timeout=30
    ).json()["id"]
    cancel = requests.post(
        f"{served.url}/v1/jobs/{job_id}/cancel", headers={"Origin": EVIL}, timeout=30
    )
    assert cancel.status_code == 403
    deadline = time.monotonic() + 120
    while requests.get(f"{served.url}/v1/jobs/{job_id}").json()["status"] in ("queued", "started"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert requests.get(f"{served.url}/v1/jobs/{job_id}").json()["status"] == "finished"


@pytest.mark.slow
def test_html_forms_from_another_origin_or_without_a_token_change_nothing(served):
    job_id = _finished_job(served)
    form = {"label": "pwned", "tags": "x"}
    cross = requests.post(
        f"{served.url}/runs/{job_id}/0/edit", data=form, headers={"Origin": EVIL}, timeout=30
    )
    assert cross.status_code == 403
    tokenless = requests.post(f"{served.url}/runs/{job_id}/0/edit", data=form, timeout=30)
    assert (tokenless.status_code, tokenless.json()["error"]["type"]) == (403, "csrf_failed")
    baseline = requests.post(f"{served.url}/runs/{job_id}/0/baseline", headers={"Origin": EVIL})
    assert baseline.status_code == 403
    assert requests.get(f"{served.url}/v1/runs/{job_id}/0").json()["label"] != "pwned"
    with requests.Session() as browser:  # the page's own form, with its cookie and token
        page = browser.get(f"{served.url}/runs/{job_id}/0", timeout=30).text
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        edit = browser.post(
            f"{served.url}/runs/{job_id}/0/edit",
            data={**form, "label": "mine", "csrf_token": token},
            headers={"Origin": served.url},
            allow_redirects=False,
            timeout=30,
        )
    assert edit.status_code == 303, edit.text[:300]
    assert requests.get(f"{served.url}/v1/runs/{job_id}/0").json()["label"] == "mine"


@pytest.mark.slow
def test_tdb_routes_keep_tdb_s_localhost_rule(served):
    url = f"{served.url}/batched_tdb"
    local = requests.post(url, json=TDB["request"], headers={"Origin": "http://localhost:8000"})
    assert local.status_code == 200, local.text[:300]
    assert requests.post(url, json=TDB["request"], headers={"Origin": EVIL}).status_code == 403
    v1 = requests.post(
        f"{served.url}/v1/{DS['endpoint']}", json=DS["request"], headers={"Origin": EVIL}
    )
    assert v1.status_code == 403


@pytest.mark.slow
def test_an_open_service_answers_only_loopback_host_names(served):
    port = served.url.rsplit(":", 1)[1]
    rebound = requests.get(
        f"{served.url}/v1/jobs", headers={"Host": f"attacker.example:{port}"}, timeout=30
    )
    assert (rebound.status_code, rebound.json()["error"]["type"]) == (421, "misdirected_request")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert requests.get(f"{served.url}/v1/jobs", headers={"Host": host}).status_code == 200


# --- settings and keys, on the app --------------------------------------------------------


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


def test_allowed_origins_and_hosts_are_settings(tmp_path, sqlite_url, golden_model_dir):
    app = _app(
        tmp_path,
        sqlite_url,
        golden_model_dir,
        allowed_origins="https://ui.example:8443, http://other.example",
        allowed_hosts="actq.internal",
    )
    client = app.test_client()
    url = f"/v1/{DS['endpoint']}"
    for origin, status in (
        ("https://ui.example:8443", 202),
        ("http://other.example", 202),
        ("http://ui.example", 403),
        ("null", 403),
    ):
        assert client.post(url, json=DS["request"], headers={"Origin": origin}).status_code == (
            status
        ), origin
    assert client.get("/v1/jobs", headers={"Host": "actq.internal:8000"}).status_code == 200
    assert client.get("/v1/jobs", headers={"Host": "evil.internal:8000"}).status_code == 421


def test_with_keys_the_origin_check_holds_and_the_401_has_two_challenges(
    tmp_path, sqlite_url, golden_model_dir
):
    app = _app(tmp_path, sqlite_url, golden_model_dir)
    with app.extensions["actq.sessionmaker"]() as session:
        _, token = create_key(session, "alice", admin=False, rate_per_minute=None)
        session.commit()
    client = app.test_client()
    refused = client.get("/v1/jobs")
    assert refused.status_code == 401
    assert refused.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="actq"',
        'Basic realm="actq"',
    ]
    auth = {"Authorization": f"Bearer {token}"}
    cross = client.post(
        f"/v1/{DS['endpoint']}", json=DS["request"], headers={**auth, "Origin": EVIL}
    )
    assert cross.status_code == 403
    # with keys, any Host is answered: the key, not the name, is what is trusted
    assert client.get("/v1/jobs", headers={**auth, "Host": "actq.example"}).status_code == 200


def test_machine_details_are_shown_to_admins_only(tmp_path, sqlite_url, golden_model_dir):
    app = _app(tmp_path, sqlite_url, golden_model_dir)
    with app.extensions["actq.sessionmaker"]() as session:
        _, user = create_key(session, "alice", admin=False, rate_per_minute=None)
        _, admin = create_key(session, "root", admin=True, rate_per_minute=None)
        session.commit()
    client = app.test_client()
    as_user = {"Authorization": f"Bearer {user}"}
    as_admin = {"Authorization": f"Bearer {admin}"}
    assert client.get("/v1/models", headers=as_user).get_json()["models"][0]["source"] is None
    source = client.get("/v1/models", headers=as_admin).get_json()["models"][0]["source"]
    assert source and str(golden_model_dir) in source
    job_id = client.post(f"/v1/{DS['endpoint']}", json=DS["request"], headers=as_user).get_json()[
        "id"
    ]
    with app.extensions["actq.sessionmaker"]() as session:
        from models.store.tables import Job

        session.get(Job, job_id).worker = "actq-model-4242@workstation"
        session.commit()
    assert client.get(f"/v1/jobs/{job_id}", headers=as_user).get_json()["worker"] is None
    shown = client.get(f"/v1/jobs/{job_id}", headers=as_admin).get_json()["worker"]
    assert shown == "actq-model-4242@workstation"
