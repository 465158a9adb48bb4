"""The job store on SQLite and PostgreSQL: create, claim, finish, fail, list."""

from __future__ import annotations

import datetime as dt

from models.store import jobs as store
from models.store.lifecycle import JobStatus, can_transition
from models.store.tables import Job, JobTag, Run
from tests.conftest import GOLDEN_CASES

TDB = next(c for c in GOLDEN_CASES if c["name"].startswith("061"))


def _create(sessions, request=None, endpoint="batched_tdb", **kw) -> str:
    with sessions.begin() as session:
        job = store.create_job(
            session,
            endpoint=endpoint,
            model=kw.pop("model", "m"),
            model_revision="r1",
            request=TDB["request"] if request is None else request,
            **kw,
        )
        return job.id


def test_job_ids_sort_by_creation_time():
    ids = [store.new_job_id() for _ in range(50)]
    assert all(len(i) == 26 and i.isalnum() and i == i.lower() for i in ids)
    first = store.new_job_id()
    import time

    time.sleep(0.002)
    assert store.new_job_id() > first


def test_create_job_stores_runs_tags_and_hash(sessions):
    job_id = _create(sessions, label="x", tags=["b", "a", "a"])
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.QUEUED
        assert job.tags == ["a", "b"]
        assert sorted(t.tag for t in job.tag_rows) == ["a", "b"]
        assert [r.index for r in job.runs] == [0, 1]
        assert [r.has_ablations for r in job.runs] == [False, True]
        assert job.runs[1].address == f"{job_id}/1"
        assert job.request == TDB["request"]
        assert job.request_hash == store.request_hash("batched_tdb", TDB["request"], "m", "r1")
        assert job.created_at.tzinfo is not None


def test_claim_once_then_duplicates_claim_nothing(sessions):
    job_id = _create(sessions)
    with sessions.begin() as session:
        assert store.claim_job(session, job_id, "w1", lease_seconds=60) == 1
    with sessions.begin() as session:
        assert store.claim_job(session, job_id, "w2", lease_seconds=60) is None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.worker) == ("started", 1, "w1")


def test_stale_heartbeat_lets_another_worker_take_over(sessions):
    job_id = _create(sessions)
    with sessions.begin() as session:
        assert store.claim_job(session, job_id, "w1", lease_seconds=60) == 1
    later = store.utcnow() + dt.timedelta(seconds=120)
    with sessions.begin() as session:
        assert store.claim_job(session, job_id, "w2", lease_seconds=60, now=later) == 2
    with sessions.begin() as session:  # the first worker's late result is refused
        assert not store.finish_job(session, job_id, 1, "{}", [], 0.1)
        assert store.finish_job(session, job_id, 2, '{"a":1}', [0.5, None], 0.2)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.worker) == ("finished", 2, "w2")
        assert store.response_bytes(job) == b'{"a":1}'
        assert job.response_size == 7
        assert [r.loss for r in job.runs] == [0.5, None]


def test_finished_job_cannot_be_claimed_or_failed(sessions):
    job_id = _create(sessions)
    with sessions.begin() as session:
        attempt = store.claim_job(session, job_id, "w", 60)
        store.finish_job(session, job_id, attempt, "{}", [1.0, 2.0], 0.0)
    later = store.utcnow() + dt.timedelta(days=1)
    with sessions.begin() as session:
        assert store.claim_job(session, job_id, "w2", 60, now=later) is None
        assert not store.fail_job(session, job_id, attempt, {"type": "x"})
        assert not store.fail_job(session, job_id, None, {"type": "x"})


def test_fail_job_stores_the_error(sessions):
    job_id = _create(sessions)
    error = {"type": "bad_request", "message": "no", "path": "subRequests.0", "status": 400}
    with sessions.begin() as session:
        attempt = store.claim_job(session, job_id, "w", 60)
        assert store.fail_job(session, job_id, attempt, error)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.error == error and job.finished_at is not None


def test_requeue_puts_a_started_job_back(sessions):
    job_id = _create(sessions)
    with sessions.begin() as session:
        store.claim_job(session, job_id, "w", 60)
        assert [j.id for j in store.pending_jobs(session)] == [job_id]
        assert store.requeue_job(session, job_id)
    with sessions() as session:
        assert session.get(Job, job_id).status == "queued"


def test_list_jobs_filters(sessions):
    clean = {"subRequests": [TDB["request"]["subRequests"][0]]}
    a = _create(sessions, request=clean, tags=["t1"], label="first", model="m1")
    b = _create(sessions, tags=["t1", "t2"], model="m2")
    c = _create(sessions, endpoint="model_info", request=None, model="m1")

    def ids(**kw):
        with sessions() as session:
            jobs, _ = store.list_jobs(session, store.JobFilter(**kw))
            return [j.id for j in jobs]

    assert ids() == [c, b, a]
    assert ids(model="m1") == [c, a]
    assert ids(tags=["t1"]) == [b, a]
    assert ids(tags=["t1", "t2"]) == [b]
    assert ids(has_ablations=True) == [b]
    assert ids(has_ablations=False) == [c, a]
    assert ids(endpoint="model_info") == [c]
    assert ids(label="first") == [a]
    prompt = clean["subRequests"][0]["prompt"]
    assert ids(prompt=prompt) == [b, a]
    assert ids(prompt=prompt + " ") == []
    assert ids(prompt_contains="BERLIN is") == [b, a]
    assert ids(prompt_contains="100%") == []
    assert ids(status="queued") == [c, b, a]
    assert ids(status="finished") == []
    with sessions() as session:
        created = session.get(Job, b).created_at
    assert ids(since=created) == [c, b]
    assert ids(until=created) == [a]


def test_list_jobs_pages_with_a_cursor(sessions):
    made = [_create(sessions, endpoint="model_info", request=None) for _ in range(5)]
    seen, cursor = [], None
    while True:
        with sessions() as session:
            jobs, cursor = store.list_jobs(session, store.JobFilter(), limit=2, before=cursor)
        seen += [j.id for j in jobs]
        if cursor is None:
            break
    assert seen == list(reversed(made))


def test_deleting_a_job_deletes_its_runs_and_tags(sessions):
    job_id = _create(sessions, tags=["x"])
    with sessions.begin() as session:
        session.delete(session.get(Job, job_id))
    with sessions() as session:
        assert session.query(Run).count() == 0
        assert session.query(JobTag).count() == 0


def test_transitions_table():
    assert can_transition("queued", "started")
    assert can_transition("started", "finished")
    assert not can_transition("finished", "started")
    assert not can_transition("queued", "finished")
    assert JobStatus.FAILED.is_final and not JobStatus.STARTED.is_final
