"""A sweep's passes run under a job's soft time limit and memory guard (``JobLimits``): a point
that passes one fails as a job alone would (``timeout``, ``resource_exhausted``), once, and the
other points of its pass are run again one by one and finish as their requests alone would."""

from __future__ import annotations

import time

import pytest
import torch

import worker.sweep_passes as passes
from models.store.tables import Job
from tests.conftest import assert_same_response, strip_timing
from tests.test_sweeps import BASE, _submit
from worker.limits import JobLimits

BAD_HEAD = 2  # of layer 0: the point that runs away


def _is_bad(group) -> bool:
    subs, _ = group
    return any(
        getattr(a.index.activation_location_type, "value", a.index.activation_location_type)
        == "attn.qk_probs"
        and a.index.layer_index == 0
        and a.index.tensor_indices[-1] == BAD_HEAD
        for a in subs[0].inference_request_spec.ablation_specs or ()
    )


def _sweep_with_a_bad_point(app, client, engine_model, monkeypatch, limits, misbehave):
    """Run a sweep of layer 0's heads whose BAD_HEAD point's passes ``misbehave()``; the view,
    and how many passes each point was in."""
    from worker.sweeps import execute_sweep

    real = passes.run_point_groups
    tried = {"bad": 0, "passes": 0}

    def run_point_groups(groups, model):
        tried["passes"] += 1
        if any(_is_bad(g) for g in groups):
            tried["bad"] += 1
            misbehave()
        return real(groups, model)

    monkeypatch.setattr(passes, "run_point_groups", run_point_groups)
    sweep = _submit(client, {"base": BASE, "grid": {"heads": [0]}})
    status = execute_sweep(
        app.extensions["actq.sessionmaker"],
        sweep["id"],
        model=lambda: engine_model,
        worker="test",
        lease_seconds=60,
        max_attempts=3,
        memory_budget=8 << 30,  # every point in one pass
        limits=limits,
    )
    assert status == "finished"  # the sweep goes on past its failed point
    return client.get(f"/v1/sweeps/{sweep['id']}").get_json(), tried


def _check(app, client, engine_model, view, tried, error_type, status):
    from worker.engine import run

    assert view["progress"] == {"done": 4, "of": 4, "finished": 3, "failed": 1, "canceled": 0}
    # the shared pass, then each point alone: the bad one twice, never again after that
    assert tried == {"bad": 2, "passes": 6}  # the baseline and 4 points, then each alone
    with app.extensions["actq.sessionmaker"]() as session:
        for point in view["points"]:
            job = session.get(Job, point["run"].split("/")[0])
            if point["nodeIndex"] == BAD_HEAD:
                assert (job.status, job.attempts) == ("failed", 1)
                assert (job.error["type"], job.error["status"]) == (error_type, status)
                assert point["loss"] is None
                continue
            assert job.status == "finished" and point["loss"] is not None
            stored = client.get(f"/v1/jobs/{job.id}/result").get_json()
            alone = run("batched_tdb", job.request, engine_model)
            assert_same_response(strip_timing(stored), strip_timing(alone))
    assert view["baseline"]["loss"] is not None


def test_a_point_over_the_soft_time_limit_fails_with_timeout(
    app, client, engine_model, monkeypatch
):
    def runaway():
        time.sleep(120)  # interrupted by the soft limit's alarm

    limits = JobLimits(soft_time_limit=3.0)
    view, tried = _sweep_with_a_bad_point(app, client, engine_model, monkeypatch, limits, runaway)
    _check(app, client, engine_model, view, tried, "timeout", 504)
    with app.extensions["actq.sessionmaker"]() as session:
        bad = next(p for p in view["points"] if p["nodeIndex"] == BAD_HEAD)
        assert "ACTQ_JOB_SOFT_TIME_LIMIT" in session.get(Job, bad["run"][:-2]).error["message"]


def test_a_point_over_the_memory_guard_fails_with_resource_exhausted(
    app, client, engine_model, monkeypatch
):
    guard = 512 << 20

    def hog():  # four times the guard, in one allocation: refused at once, nothing touched
        torch.empty(4 * guard, dtype=torch.uint8)
        pytest.fail("the memory guard did not refuse the allocation")

    limits = JobLimits(memory_guard_bytes=guard)
    view, tried = _sweep_with_a_bad_point(app, client, engine_model, monkeypatch, limits, hog)
    _check(app, client, engine_model, view, tried, "resource_exhausted", 422)
