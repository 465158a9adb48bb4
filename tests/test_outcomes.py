"""A job read for its result holds the stored response bytes as the whole row does, and no runs."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import InvalidRequestError

from models.store.jobs import create_job, get_job, response_bytes
from models.store.outcomes import get_outcome
from models.wire.encoding import dumps
from tests.runs_support import golden_pair, store_finished


def test_the_outcome_is_the_stored_response(sessions):
    request = golden_pair()
    response = {"inferenceSubResponses": [{"x": [0.1 * i for i in range(5000)]}] * 2}
    job_id = store_finished(sessions, request, response)
    with sessions() as session:
        whole = get_job(session, job_id)
        stored = whole.response
    with sessions() as session:
        job = get_outcome(session, job_id)
    assert job.status == "finished"
    assert job.response == stored and isinstance(job.response, bytes)
    assert response_bytes(job) == dumps(response).encode()
    with pytest.raises(InvalidRequestError):
        job.runs  # noqa: B018 - a result needs none; touching them is a bug


def test_a_job_without_a_response_and_no_job(sessions):
    with sessions.begin() as session:
        job_id = create_job(
            session, endpoint="batched_tdb", model="m", model_revision=None, request=golden_pair()
        ).id
    with sessions() as session:
        job = get_outcome(session, job_id)
        assert (job.status, job.response) == ("queued", None)
        assert get_outcome(session, "no-such-job") is None
