"""Reliability logic as plain functions on SQLite and PostgreSQL: the claim's attempt limit, the
reaper (requeue, worker_lost, cancel), the outbox through a real filesystem broker, cancellation at
stage boundaries, the soft time limit and the hard-limit failure. The same promises on real
processes (killed workers, Redis and PostgreSQL restarts) are in ``tests/test_faults.py``."""

from __future__ import annotations

import datetime as dt
import time

from models.settings import Settings
from models.store import jobs as store
from models.store import recovery
from models.store.tables import Job, utcnow
from tests.conftest import GOLDEN_MODEL_NAME, OK_CASES, queued_messages
from worker.execution import execute_job
from worker.limits import JobLimits
from worker.reaper import Reaper

CASE = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
LEASE = 60.0


def _submit(sessions, tags=None, published=True) -> str:
    with sessions.begin() as session:
        job = store.create_job(
            session,
            endpoint=CASE["endpoint"],
            model=GOLDEN_MODEL_NAME,
            model_revision="r",
            request=CASE["request"],
            tags=tags,
        )
        if published:
            job.published_at = job.created_at
        return job.id


def _job(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def _claim(sessions, job_id, worker="w1", now=None, max_attempts=None):
    with sessions.begin() as session:
        return store.claim_job(session, job_id, worker, LEASE, now=now, max_attempts=max_attempts)


def _later(seconds: float = LEASE + 1) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def _reap(sessions, now, max_attempts=3) -> recovery.Reaped:
    with sessions.begin() as session:
        return recovery.reap(session, LEASE, max_attempts, now=now)


# --- claims and the reaper ------------------------------------------------------------------


def test_a_job_is_claimed_at_most_max_attempts_times(sessions):
    job_id = _submit(sessions)
    assert _claim(sessions, job_id, "w1", max_attempts=2) == 1
    assert _claim(sessions, job_id, "w2", now=_later(), max_attempts=2) == 2
    assert _claim(sessions, job_id, "w3", now=_later(3 * LEASE), max_attempts=2) is None
    assert _job(sessions, job_id).worker == "w2"


def test_reaper_requeues_a_stale_job_and_leaves_a_live_one(sessions):
    stale, live = _submit(sessions), _submit(sessions)
    _claim(sessions, stale)
    with sessions.begin() as session:  # the live job's worker beats later than the stale one
        store.claim_job(session, live, "w2", LEASE, now=_later(30))
    reaped = _reap(sessions, now=_later())
    assert (reaped.requeued, reaped.failed, reaped.canceled) == ([stale], [], [])
    job = _job(sessions, stale)
    assert (job.status, job.attempts, job.worker, job.published_at) == ("queued", 1, None, None)
    assert _job(sessions, live).status == "started"
    assert not _reap(sessions, now=_later())  # nothing left to do: a second reaper is a no-op


def test_reaper_fails_a_job_whose_worker_was_lost_on_every_attempt(sessions):
    job_id = _submit(sessions)
    for attempt in range(1, 4):
        assert _claim(sessions, job_id, f"w{attempt}", now=_later(attempt * 2 * LEASE)) == attempt
    reaped = _reap(sessions, now=_later(8 * LEASE), max_attempts=3)
    assert reaped.failed == [job_id]
    job = _job(sessions, job_id)
    assert job.status == "failed"
    assert job.error["type"] == "worker_lost"
    assert "3 attempts" in job.error["message"] and "ACTQ_MAX_ATTEMPTS" in job.error["message"]


def test_reaper_cancels_a_stale_job_that_was_asked_to_cancel(sessions):
    job_id = _submit(sessions)
    _claim(sessions, job_id)
    with sessions.begin() as session:
        assert recovery.request_cancel(session, job_id) == "started"
    assert _claim(sessions, job_id, "w2", now=_later()) is None  # not taken over either
    assert _reap(sessions, now=_later()).canceled == [job_id]
    assert _job(sessions, job_id).status == "canceled"


def test_hard_time_limit_fails_the_job_of_that_worker_only(sessions):
    job_id = _submit(sessions)
    _claim(sessions, job_id, worker="actq-m-1@host:42")
    with sessions.begin() as session:
        assert not recovery.fail_timed_out(session, job_id, "actq-m-2@host", 30)
        assert recovery.fail_timed_out(session, job_id, "actq-m-1@host", 30)
    job = _job(sessions, job_id)
    assert (job.status, job.error["type"], job.error["status"]) == ("failed", "timeout", 504)
    assert "ACTQ_JOB_TIME_LIMIT" in job.error["message"]


# --- the outbox -----------------------------------------------------------------------------


def _reaper(tmp_path, sessions, db_url) -> Reaper:
    from api.queue import make_producer
    from models.store.lifecycle import TASK_NAME, queue_name

    settings = Settings(
        database_url=db_url, broker_url=f"filesystem://{tmp_path / 'broker'}", lease_seconds=LEASE
    )
    producer = make_producer(settings)

    def publish(job_id: str, model: str) -> None:
        producer.send_task(TASK_NAME, args=[job_id], queue=queue_name(model))

    return Reaper(settings, sessions, publish)


def test_reaper_publishes_unpublished_and_requeued_jobs_once(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    unpublished, published, stale = (
        _submit(sessions, published=False),
        _submit(sessions),
        _submit(sessions),
    )
    _claim(sessions, stale)
    sweep = reaper.sweep(now=_later())
    assert sweep.requeued == [stale]
    assert sorted(sweep.published) == sorted([unpublished, stale])
    assert len(queued_messages(tmp_path)) == 2
    assert _job(sessions, unpublished).published_at is not None
    assert _job(sessions, published).status == "queued"
    assert reaper.sweep(now=_later()).published == []  # published jobs are not sent again


def test_a_fresh_unpublished_job_is_left_to_the_api_for_a_moment(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    _submit(sessions, published=False)
    assert reaper.sweep().published == []  # within the grace period the API marks it itself


def test_forgotten_publications_are_sent_again(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    job_id = _submit(sessions)
    with sessions.begin() as session:
        assert recovery.forget_publications(session) == 1
    assert reaper.sweep(now=_later()).published == [job_id]


# --- cancellation and time limits in the task ----------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(sessions):
    job_id = _submit(sessions)
    with sessions.begin() as session:
        assert recovery.request_cancel(session, job_id) == "canceled"
    assert execute_job(sessions, job_id, model=lambda: None) is None  # its message: a no-op
    assert _job(sessions, job_id).status == "canceled"


def test_a_started_job_stops_at_the_next_stage_boundary(sessions, engine_model):
    from worker.engine import run

    job_id = _submit(sessions)
    ran = []

    def runner(endpoint, request, model):  # the engine, with a cancel arriving while it runs
        with sessions.begin() as session:
            assert recovery.request_cancel(session, job_id) == "started"
        ran.append(1)
        return run(endpoint, request, model)

    status = execute_job(sessions, job_id, model=lambda: engine_model, runner=runner)
    assert (status, ran) == ("canceled", [1])
    job = _job(sessions, job_id)
    assert (job.status, job.response, job.finished_at is not None) == ("canceled", None, True)


def test_soft_time_limit_fails_the_job_with_timeout(sessions, engine_model):
    job_id = _submit(sessions)

    def runaway(endpoint, request, model):
        time.sleep(30)

    limits = JobLimits(soft_time_limit=0.2, heartbeat_seconds=0.05)
    status = execute_job(
        sessions, job_id, model=lambda: engine_model, runner=runaway, limits=limits
    )
    assert status == "failed"
    job = _job(sessions, job_id)
    assert (job.error["type"], job.error["status"]) == ("timeout", 504)
    assert "ACTQ_JOB_SOFT_TIME_LIMIT" in job.error["message"]


def test_debug_delays_need_the_knob_and_the_tag():
    tags = ["x", "debug-delay=2.5"]
    assert JobLimits(debug_delays=True).delay_for(tags) == 2.5
    assert JobLimits(debug_delays=False).delay_for(tags) == 0.0
    assert JobLimits(debug_delays=True).delay_for(["x"]) == 0.0
    assert JobLimits(debug_delays=True).delay_for(["debug-delay=soon"]) == 0.0


def test_a_superseded_attempt_stores_nothing(sessions, engine_model):
    """Exactly once: the first worker finishes after its job was taken over; only one write."""
    from worker.engine import run

    job_id = _submit(sessions)

    def overtaken(endpoint, request, model):  # another worker claims the job meanwhile
        assert _claim(sessions, job_id, "w2", now=_later()) == 2
        return run(endpoint, request, model)

    limits = JobLimits(lease_seconds=LEASE, heartbeat_seconds=60)
    status = execute_job(
        sessions, job_id, model=lambda: engine_model, runner=overtaken, worker="w1", limits=limits
    )
    assert status == "superseded"
    job = _job(sessions, job_id)
    assert (job.status, job.worker, job.attempts, job.response) == ("started", "w2", 2, None)


def test_actq_reap_requeues_publishes_and_fails_in_one_sweep(tmp_path, sqlite_url):
    import os

    from models.store.db import make_engine, make_sessionmaker
    from tests.conftest import run_actq

    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    lost, exhausted = _submit(sessions), _submit(sessions)
    long_ago = utcnow() - dt.timedelta(seconds=10 * LEASE)
    _claim(sessions, lost, now=long_ago)
    for attempt in range(3):
        _claim(sessions, exhausted, now=long_ago + dt.timedelta(seconds=2 * LEASE * attempt))
    env = {
        **os.environ,
        "ACTQ_DATABASE_URL": sqlite_url,
        "ACTQ_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
        "ACTQ_LEASE_SECONDS": str(LEASE),
    }
    swept = run_actq("reap", env=env)
    assert swept.returncode == 0, swept.stderr
    assert b"requeued 1, failed 1, canceled 0, published 1" in swept.stderr
    assert (_job(sessions, lost).status, _job(sessions, exhausted).status) == ("queued", "failed")
    assert len(queued_messages(tmp_path)) == 1
    engine.dispose()
