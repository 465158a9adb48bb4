"""End to end through ``actq up`` (SQLite, filesystem broker, one worker) and the CLI."""

from __future__ import annotations

import json

import pytest

from api.client import Client
from tests.conftest import ERROR_CASES, OK_CASES, assert_same_response, run_actq, strip_timing


@pytest.fixture(scope="module")
def api(embedded_stack) -> Client:
    return Client(embedded_stack.url, timeout=60)


@pytest.mark.parametrize("case", OK_CASES, ids=[c["name"] for c in OK_CASES])
def test_every_route_gives_the_engine_result(api, engine_model, case):
    from worker.engine import run

    job = api.submit(case["endpoint"], case["request"])
    final = api.wait(job["id"], timeout=300)
    assert final["status"] == "finished", final
    expected = run(case["endpoint"], case["request"], engine_model)
    assert_same_response(strip_timing(api.result_json(job["id"])), strip_timing(expected))


def test_bad_request_is_refused(api):
    case = ERROR_CASES[0]
    with pytest.raises(Exception) as info:
        api.submit(case["endpoint"], case["request"])
    assert 400 <= info.value.status < 500


def test_cli_submit_status_wait_result_history(embedded_stack, tmp_path, engine_model):
    from worker.engine import run

    case = next(c for c in OK_CASES if c["endpoint"] == "batched_tdb")
    request = tmp_path / "request.json"
    request.write_text(json.dumps(case["request"]))
    env = embedded_stack.env
    out = run_actq(
        "submit",
        "batched_tdb",
        str(request),
        "--tag",
        "cli",
        "--label",
        "from cli",
        "--fresh",  # an earlier test may have run the same request: this one must run
        env=env,
    )
    assert out.returncode == 0, out.stderr
    job_id, url = out.stdout.decode().split()
    assert url == f"{embedded_stack.url}/v1/jobs/{job_id}"

    waited = run_actq("wait", job_id, "--json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert f"job {job_id}" in waited.stderr.decode()  # the progress line
    assert json.loads(waited.stdout)["status"] == "finished"

    status = run_actq("status", job_id, "--json", env=env)
    assert json.loads(status.stdout)["label"] == "from cli"
    short = run_actq("status", job_id, env=env).stdout.decode()  # a summary for a person
    assert short.startswith(f"job {job_id}  finished  batched_tdb") and "label from cli" in short
    assert f"run {job_id}/0  loss " in short

    result = run_actq("result", job_id, env=env)
    assert result.returncode == 0
    expected = run("batched_tdb", case["request"], engine_model)
    assert_same_response(strip_timing(json.loads(result.stdout)), strip_timing(expected))

    history = run_actq("history", "--tag", "cli", env=env)
    assert history.returncode == 0
    lines = history.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[1].startswith(job_id)

    waited_submit = run_actq("submit", "model_info", "--wait", "--fresh", env=env)
    assert waited_submit.returncode == 0, waited_submit.stderr
    assert "finished" in waited_submit.stderr.decode()


def test_cli_reports_a_refused_request(embedded_stack, tmp_path):
    case = next(c for c in ERROR_CASES if c["endpoint"] == "batched_tdb")
    request = tmp_path / "bad.json"
    request.write_text(json.dumps(case["request"]))
    out = run_actq("submit", "batched_tdb", str(request), env=embedded_stack.env)
    assert out.returncode == 1
    assert "subRequests.0" in out.stderr.decode()


def test_actq_up_puts_pending_jobs_back_in_the_queue(tmp_path, golden_model_dir):
    """Jobs left queued without a message, or started by a worker that is gone, run at start."""
    import migrations
    from models.store import jobs as store
    from models.store.db import make_engine, make_sessionmaker
    from tests.conftest import GOLDEN_MODEL_NAME, _base_env
    from tests.stack import Stack, free_port, start_up

    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'actq.db'}"
    migrations.upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    case = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
    ids = []
    with sessions.begin() as session:
        for _ in range(2):
            job = store.create_job(
                session,
                endpoint=case["endpoint"],
                model=GOLDEN_MODEL_NAME,
                model_revision=None,
                request=case["request"],
            )
            ids.append(job.id)
    with sessions.begin() as session:
        assert store.claim_job(session, ids[1], "a-worker-that-died", lease_seconds=600) == 1
    engine.dispose()

    port = free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", env=_base_env(tmp_path), workdir=tmp_path)
    try:
        start_up(stack, port, data_dir, golden_model_dir)
        client = Client(stack.url)
        finals = [client.wait(job_id, timeout=120) for job_id in ids]
    finally:
        stack.stop()
    assert [f["status"] for f in finals] == ["finished", "finished"]
    assert [f["attempts"] for f in finals] == [1, 2]
    assert "pending job(s) put back" in stack.processes["up"].log()
