"""A cancel asked for while a co-batched pack is being answered and stored is honoured per job:
a job canceled after the pack began is stored ``canceled``, never ``finished``, while the others
of its pack finish; and a cancel that arrives after the worker's last look, just before the
store, still wins (the store itself looks, for packed jobs and jobs alone)."""

from __future__ import annotations

import pytest

import worker.cobatch as cobatch
import worker.execution as execution
from models.store import recovery
from tests.test_cobatch import MIX, _job, _submit
from worker.cobatch import execute_jobs

OK = [case for case in MIX if case.get("error") is None][:4]


def _cancel(sessions, job_id: str) -> str:
    with sessions.begin() as session:
        return recovery.request_cancel(session, job_id)


def test_a_job_canceled_while_its_pack_is_stored_is_canceled_not_finished(sessions, engine_model):
    ids = [_submit(sessions, case) for case in OK]
    announced: list[str] = []

    def announce(job_id: str) -> None:
        announced.append(job_id)
        if len(announced) == 1:  # the pack's first answer is stored: cancel its last job
            assert _cancel(sessions, ids[-1]) == "started"

    status = execute_jobs(
        sessions, ids[0], model=lambda: engine_model, batch_jobs=len(ids), announce=announce
    )
    assert status == "finished"
    assert sorted(announced) == sorted(ids)  # every job of the pack ended and was announced
    jobs = [_job(sessions, job_id) for job_id in ids]
    assert [j.status for j in jobs] == ["finished"] * (len(ids) - 1) + ["canceled"]
    assert jobs[-1].response is None and jobs[-1].finished_at is not None


@pytest.mark.parametrize("together", [True, False], ids=["co-batched", "alone"])
def test_a_cancel_after_the_last_look_still_beats_the_finish(
    sessions, engine_model, monkeypatch, together
):
    ids = [_submit(sessions, case) for case in OK] if together else [_submit(sessions, OK[0])]
    late = ids[-1]
    looks = []
    if together:  # each packed job looks once before the pack runs
        real = cobatch.stop_if_canceled

        def look_then_cancel(sessions_, job_id, attempt, patience):
            stopped = real(sessions_, job_id, attempt, patience)
            looks.append(job_id)
            if job_id == late:  # a cancel arriving just after each look the worker takes
                assert stopped is None and _cancel(sessions, job_id) == "started"
            return stopped

        monkeypatch.setattr(cobatch, "stop_if_canceled", look_then_cancel)
    else:  # a job run alone at once: its claim was the look (a canceled job is not claimable)
        real_claim = cobatch.claim

        def claim_then_cancel(sessions_, job_id, *args, **kwargs):
            claimed = real_claim(sessions_, job_id, *args, **kwargs)
            looks.append(job_id)
            assert claimed is not None and _cancel(sessions, job_id) == "started"
            return claimed

        monkeypatch.setattr(cobatch, "claim", claim_then_cancel)
        no_look = lambda *args: pytest.fail("a second look before the engine")  # noqa: E731
        monkeypatch.setattr(execution, "stop_if_canceled", no_look)
    status = execute_jobs(
        sessions, ids[0], model=lambda: engine_model, batch_jobs=len(ids), announce=lambda _: None
    )
    assert status == ("finished" if together else "canceled")
    assert looks.count(late) == 1  # the look before the engine; the store's own is the last
    job = _job(sessions, late)
    assert (job.status, job.response) == ("canceled", None)
    assert [_job(sessions, job_id).status for job_id in ids[:-1]] == ["finished"] * (len(ids) - 1)


def test_a_failing_job_canceled_after_the_last_look_is_canceled(sessions, engine_model):
    from worker.execution import execute_job

    job_id = _submit(sessions, OK[0])

    def refuse(endpoint, request, model):  # the cancel arrives while the engine runs
        assert _cancel(sessions, job_id) == "started"
        raise ValueError("the engine failed")

    assert execute_job(sessions, job_id, model=lambda: engine_model, runner=refuse) == "canceled"
    job = _job(sessions, job_id)
    assert (job.status, job.error) == ("canceled", None)
