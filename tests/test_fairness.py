"""Fairness between owners (``models.store.fairness``): the claim and the queue position, on both
databases, with the real engine; the service test with two API keys is in
``tests/test_fairness_stack.py``.

A broker is played here by a list of messages (job ids), consumed in order and appended to when
a worker publishes a job again, as Redis would do.
"""

from __future__ import annotations

import datetime as dt

from models.store import fairness
from models.store import jobs as store
from models.store.tables import Job
from tests.conftest import GOLDEN_MODEL_NAME, OK_CASES
from worker.execution import execute_job

CASE = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")


def _submit(sessions, owner: str | None) -> str:
    with sessions.begin() as session:
        job = store.create_job(
            session,
            endpoint=CASE["endpoint"],
            model=GOLDEN_MODEL_NAME,
            model_revision="r",
            request=CASE["request"],
            owner=owner,
        )
        return job.id


def _jobs(sessions, ids) -> list[Job]:
    with sessions() as session:
        return [session.get(Job, i) for i in ids]


def _drain(sessions, messages: list[str], engine_model) -> list[str]:
    """Deliver every message, in order, to one worker; returns the job ids in the order run."""
    ran: list[str] = []
    while messages:
        execute_job(
            sessions,
            messages.pop(0),
            model=lambda: engine_model,
            worker="w1",
            publish=lambda job_id, _model: messages.append(job_id),
            done=ran.append,
        )
    return ran


def test_one_owner_s_queue_does_not_hold_back_another_owner_s_job(sessions, engine_model):
    bob = [_submit(sessions, "bob") for _ in range(6)]
    alice = _submit(sessions, "alice")
    messages = [*bob, alice]  # as published: bob's six, then alice's
    first = messages.pop(0)
    execute_job(sessions, first, model=lambda: engine_model, worker="w1")  # bob's first runs
    with sessions() as session:
        positions = fairness.queue_positions(session, GOLDEN_MODEL_NAME)
        assert fairness.next_fair_job(session, bob[1]) == alice  # bob's turn goes to alice
    assert positions[alice] == 0  # bob's job started last: alice's is next
    assert [positions[j] for j in bob[1:]] == [1, 2, 3, 4, 5]  # bob's in their order
    ran = _drain(sessions, messages, engine_model)
    assert ran == [alice, *bob[1:]]  # alice's after one of bob's; bob's oldest first
    jobs = _jobs(sessions, [*bob, alice])
    assert all((j.status, j.attempts) == ("finished", 1) for j in jobs)  # none lost, none twice
    assert jobs[1].published_at is not None  # bob's second, whose turn alice took, republished


def test_owners_take_turns_and_a_lone_owner_runs_in_order(sessions, engine_model):
    bob = [_submit(sessions, "bob") for _ in range(3)]
    alice = [_submit(sessions, "alice") for _ in range(3)]
    ran = _drain(sessions, [*bob, *alice], engine_model)
    # nobody has started a job: bob's oldest goes first, then turns alternate
    assert ran == [bob[0], alice[0], bob[1], alice[1], bob[2], alice[2]]
    lone = [_submit(sessions, None) for _ in range(3)]
    # one owner: in the order of the messages, as before there was fairness
    assert _drain(sessions, list(reversed(lone)), engine_model) == list(reversed(lone))


def test_a_turn_given_away_leaves_the_job_in_the_outbox_when_publishing_fails(
    sessions, engine_model
):
    bob = [_submit(sessions, "bob") for _ in range(2)]
    execute_job(sessions, bob[0], model=lambda: engine_model, worker="w1")
    alice = _submit(sessions, "alice")

    def broker_down(job_id, model):
        raise ConnectionError("broker unreachable")

    execute_job(sessions, bob[1], model=lambda: engine_model, worker="w1", publish=broker_down)
    waiting, done = _jobs(sessions, [bob[1], alice])
    assert done.status == "finished"
    # queued with no message: the reaper's outbox sweep publishes it again
    assert (waiting.status, waiting.published_at) == ("queued", None)
    from models.store.recovery import unpublished_jobs

    with sessions() as session:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        assert (bob[1], GOLDEN_MODEL_NAME) in unpublished_jobs(session, later)


def test_queue_position_is_in_the_job_json_and_null_once_started(app, app_sessions):
    bob = [_submit(app_sessions, "bob") for _ in range(3)]
    alice = _submit(app_sessions, "alice")
    client = app.test_client()
    positions = {j: client.get(f"/v1/jobs/{j}").get_json()["queuePosition"] for j in bob}
    positions[alice] = client.get(f"/v1/jobs/{alice}").get_json()["queuePosition"]
    # nobody started anything: bob's oldest, alice's, then bob's others
    assert [positions[j] for j in (bob[0], alice, bob[1], bob[2])] == [0, 1, 2, 3]
    listed = {j["id"]: j["queuePosition"] for j in client.get("/v1/jobs").get_json()["jobs"]}
    assert listed == positions
    with app_sessions.begin() as session:
        store.claim_job(session, bob[0], "w1", 60)
    assert client.get(f"/v1/jobs/{bob[0]}").get_json()["queuePosition"] is None
    assert client.get(f"/v1/jobs/{alice}").get_json()["queuePosition"] == 0
