"""Reading runs for a comparison (``models.store.response_stream``): each stored response is
decoded at most once, only the runs compared are built, and the comparison is the one that
the whole decoded response gives."""

from __future__ import annotations

import copy
import json
import zlib

from api.comparison import compare, run_side
from models.store import jobs as store
from models.store.response_stream import read_parts
from models.store.tables import Job
from tests.conftest import GOLDEN_MODEL_NAME
from tests.runs_support import golden_pair, store_finished

RUNS = 8


def _eight_runs() -> tuple[dict, dict]:
    """The golden clean/ablated pair repeated into one job of eight runs."""
    pair = golden_pair()
    request, response = pair["request"], pair["response"]
    subs = [copy.deepcopy(request["subRequests"][i % 2]) for i in range(RUNS)]
    answers = [copy.deepcopy(response["inferenceSubResponses"][i % 2]) for i in range(RUNS)]
    return {**request, "subRequests": subs}, {**response, "inferenceSubResponses": answers}


def _job(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_one_run_is_read_without_decoding_past_it(sessions):
    request, response = _eight_runs()
    job = _job(sessions, store_finished(sessions, request, response))
    whole = json.loads(store.response_bytes(job))
    parts, decoded = read_parts(job.response, {2}, batched=True)
    assert parts == {2: whole["inferenceSubResponses"][2]}
    assert decoded < job.response_size  # stopped after the run it wanted
    parts, decoded = read_parts(job.response, {0, RUNS - 1}, batched=True)
    assert set(parts) == {0, RUNS - 1}
    assert decoded <= job.response_size  # two runs of one job: one decoding, at most


def test_data_that_is_not_compared_is_kept_as_its_kind_alone(sessions):
    request, response = _eight_runs()
    job = _job(sessions, store_finished(sessions, request, response))
    sub = json.loads(store.response_bytes(job))["inferenceSubResponses"][3]
    skip = frozenset({"scored_tokens_response_data"})
    parts, _ = read_parts(job.response, {3}, batched=True, skip_kinds=skip)
    data, read = sub["processingResponseDataByName"], parts[3]["processingResponseDataByName"]
    assert read["upvotedOutputTokens"] == {"responseDataType": "scored_tokens_response_data"}
    kept = {k: v for k, v in data.items() if v["responseDataType"] not in skip}
    assert {k: v for k, v in read.items() if k in kept} == kept  # the rest exactly as stored
    assert parts[3]["inferenceResponse"] == sub["inferenceResponse"]
    whole = json.loads(store.response_bytes(job))
    alone, _ = read_parts(
        zlib.compress(json.dumps(whole["inferenceSubResponses"][3]).encode()),
        {0},
        batched=False,
        skip_kinds=skip,
    )
    assert alone[0] == parts[3]  # one run's response read whole: the same pruning


def test_compare_answers_as_from_the_whole_response(app, app_sessions):
    request, response = _eight_runs()
    job_id = store_finished(app_sessions, request, response)
    answer = app.test_client().get(f"/v1/compare?a={job_id}/1&b={job_id}/6")
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()
    whole = json.loads(store.response_bytes(_job(app_sessions, job_id)))
    sides = [
        run_side(f"{job_id}/{i}", "batched_tdb", GOLDEN_MODEL_NAME, None, request, whole, i)
        for i in (1, 6)
    ]
    expected = compare(*sides)
    assert got["nodeTables"] == json.loads(json.dumps(expected["nodeTables"]))
    assert got["loss"] == expected["loss"] and got["tokens"] == expected["tokens"]
    assert got["notCompared"] == expected["notCompared"]
    assert got["nodeTables"] and got["nodeTables"][0]["rows"]
