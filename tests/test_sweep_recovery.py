"""Sweeps in the outbox and under the reaper, like jobs and record sets: the API marks a sweep
published once the broker took its message (and still accepts it, 202, when the broker is down);
the reaper publishes a sweep without a message, requeues one whose worker stopped beating (or
fails it with ``worker_lost`` at the last attempt), and a requeued sweep resumes where it was."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from models.settings import Settings
from models.store import side_recovery
from models.store.sweeps import SWEEP_TASK, claim_sweep, create_sweep
from models.store.tables import Sweep, utcnow
from tests.conftest import queued_messages
from worker.reaper import Reaper

BASE = json.loads((Path(__file__).parents[1] / "examples" / "batched_tdb.json").read_text())
LEASE = 60.0
POINT = {"nodeType": "attention_head", "layer": 0, "index": 0, "position": 0, "value": 0.0}


def _sweep(sessions, published=True) -> str:
    with sessions.begin() as session:
        sweep = create_sweep(
            session,
            [POINT],
            model="m",
            endpoint="batched_tdb",
            base_request={},
            grid={},
            node_group="g",
        )
        if published:
            sweep.published_at = sweep.created_at
        return sweep.id


def _get(sessions, sweep_id) -> Sweep:
    with sessions() as session:
        return session.get(Sweep, sweep_id)


def _reaper(tmp_path, sessions, db_url, max_attempts=3) -> Reaper:
    from api.queue import make_producer
    from models.store.lifecycle import TASK_NAME, queue_name

    settings = Settings(
        database_url=db_url,
        broker_url=f"filesystem://{tmp_path / 'broker'}",
        lease_seconds=LEASE,
        max_attempts=max_attempts,
    )
    producer = make_producer(settings)

    def send(task):
        return lambda row_id, model: producer.send_task(
            task, args=[row_id], queue=queue_name(model)
        )

    return Reaper(settings, sessions, send(TASK_NAME), None, publish_sweeps=send(SWEEP_TASK))


def _claim(sessions, sweep_id, max_attempts=3):
    with sessions.begin() as session:
        return claim_sweep(session, sweep_id, "w1", LEASE, max_attempts)


def test_the_reaper_publishes_an_unpublished_sweep_once(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    unpublished, published = _sweep(sessions, False), _sweep(sessions)
    assert reaper.sweep().sweeps_published == []  # within the grace the API may still publish
    later = utcnow() + dt.timedelta(seconds=5)
    assert reaper.sweep(now=later).sweeps_published == [unpublished]
    assert len(queued_messages(tmp_path)) == 1
    assert _get(sessions, unpublished).published_at is not None
    assert reaper.sweep(now=later).sweeps_published == []
    with sessions.begin() as session:  # the broker lost its messages: both are sent again
        assert side_recovery.forget_publications(session, Sweep) == 2
    assert sorted(reaper.sweep(now=later).sweeps_published) == sorted([unpublished, published])


def test_the_reaper_requeues_a_dead_workers_sweep_and_publishes_it(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    stale = _sweep(sessions)
    assert _claim(sessions, stale) == 1
    assert reaper.sweep().sweeps_requeued == []  # its heartbeat is fresh
    done = reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1))
    assert done.sweeps_requeued == [stale] and done.sweeps_published == [stale]
    assert len(queued_messages(tmp_path)) == 1
    requeued = _get(sessions, stale)
    assert requeued.status == "queued" and requeued.worker is None and requeued.attempts == 1
    assert _claim(sessions, stale) == 2  # the next worker takes it: attempt 2


def test_a_sweep_lost_on_every_attempt_fails_with_worker_lost(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url, max_attempts=1)
    sweep_id = _sweep(sessions)
    assert _claim(sessions, sweep_id, max_attempts=1) == 1
    done = reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1))
    assert done.sweeps_failed == [sweep_id] and done.sweeps_published == []
    failed = _get(sessions, sweep_id)
    assert failed.status == "failed" and failed.error["type"] == "worker_lost"
    assert failed.finished_at is not None


def _submit(client):
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": {"heads": [0, 1]}})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_the_api_marks_its_sweep_published(app, client, tmp_path):
    sweep_id = _submit(client)
    assert _get(app.extensions["actq.sessionmaker"], sweep_id).published_at is not None
    assert len(queued_messages(tmp_path)) == 1


def test_with_the_broker_down_the_api_accepts_the_sweep_into_the_outbox(app, client, tmp_path):
    queue = tmp_path / "broker" / "queue"
    shutil.rmtree(queue)
    queue.write_text("")  # the filesystem broker cannot write its message: publishing fails
    sweep_id = _submit(client)
    sweep = _get(app.extensions["actq.sessionmaker"], sweep_id)
    assert sweep.status == "queued" and sweep.published_at is None


def _runner(app, engine_model, sweep_id, max_attempts=3):
    """Runs the sweep as a worker would, counting the points of each pass; ``die_after`` passes
    it dies as a killed worker does (nothing stored, the claim held)."""
    import worker.sweep_passes as passes
    from worker.sweeps import execute_sweep

    sessions = app.extensions["actq.sessionmaker"]
    real = passes.run_point_groups

    def run(worker, groups_seen, die_after=None):
        def counting(groups, model):
            if die_after is not None and len(groups_seen) == die_after:
                raise SystemExit("worker killed")  # not an Exception: nothing stored, as a kill
            groups_seen.append(len(groups))
            return real(groups, model)

        passes.run_point_groups = counting
        try:
            return execute_sweep(
                sessions,
                sweep_id,
                model=lambda: engine_model,
                worker=worker,
                lease_seconds=LEASE,
                max_attempts=max_attempts,
                memory_budget=1,
            )
        finally:
            passes.run_point_groups = real

    return run


def test_a_requeued_sweep_resumes_only_its_unfinished_points(app, client, engine_model, tmp_path):
    sessions = app.extensions["actq.sessionmaker"]
    sweep_id = _submit(client)
    run, ran = _runner(app, engine_model, sweep_id), []
    with pytest.raises(SystemExit):
        run("first", ran, die_after=2)  # the baseline and one point, then the worker dies
    reaper = _reaper(tmp_path, sessions, str(app.config["ACTQ_SETTINGS"].database()))
    done = reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1))
    assert done.sweeps_requeued == [sweep_id] and done.sweeps_published == [sweep_id]
    assert _get(sessions, sweep_id).status == "queued"
    counted = []
    assert run("second", counted) == "finished"
    assert sum(counted) == 7  # the 8 points less the one finished; the baseline not again
    view = client.get(f"/v1/sweeps/{sweep_id}").get_json()
    assert view["progress"]["finished"] == 8 and view["attempts"] == 2
    assert all(p["lossChange"] is not None for p in view["points"])


def test_a_sweep_failed_by_the_reaper_fails_its_queued_jobs(app, client, engine_model, tmp_path):
    sessions = app.extensions["actq.sessionmaker"]
    sweep_id = _submit(client)
    run = _runner(app, engine_model, sweep_id, max_attempts=1)
    with pytest.raises(SystemExit):
        run("first", [], die_after=2)
    url = str(app.config["ACTQ_SETTINGS"].database())
    reaper = _reaper(tmp_path, sessions, url, max_attempts=1)
    done = reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1))
    assert done.sweeps_failed == [sweep_id] and len(done.failed) == 1  # the point it held
    view = client.get(f"/v1/sweeps/{sweep_id}").get_json()
    assert view["status"] == "failed" and view["error"]["type"] == "worker_lost"
    assert view["progress"] == {"done": 8, "of": 8, "finished": 1, "failed": 7, "canceled": 0}
    assert reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1)).published == []
