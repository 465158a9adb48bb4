"""Issue 12's done-when over the wire: on random Llama, Qwen2 and GPT-NeoX (both residual kinds)
models, TDB's UI pair, a node table with act_times_grad and a neuron ablation, and an attention
trace answer through ``actq run`` and over HTTP (embedded ``actq up --model DIR``) exactly as the
engine does in-process; /v1/models, runs and comparisons report the family."""

from __future__ import annotations

import copy
import json

import pytest

from api.client import Client
from tests.conftest import GOLDEN_DIR, _base_env, assert_same_response, run_actq, strip_timing
from tests.family_models import build
from tests.stack import Stack, free_port, start_up
from worker.engine import load_model, run

FAMILIES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "neox-parallel": "gpt_neox",
    "neox-sequential": "gpt_neox",
}


def _request(name: str) -> dict:
    return json.loads((GOLDEN_DIR / "cases" / f"{name}.json").read_text())["request"]


def _requests() -> list[tuple[str, dict]]:
    trace = copy.deepcopy(_request("056-tdb-trace-attn-q"))
    trace["subRequests"][0]["upstreamNodeToTrace"]["nodeIndex"]["layerIndex"] = 1
    return [
        ("batched_tdb", _request("061-tdb-ui-pair-clean-and-ablated")),
        ("multiple_top_k_derived_scalars", _request("034-mtk-act-times-grad-mlp-ablation")),
        ("batched_tdb", trace),
    ]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_stack(request, tmp_path_factory):
    name = request.param
    workdir = tmp_path_factory.mktemp(f"http-{name}")
    model_dir = build(name, workdir / name, seed=3)
    port = free_port()
    env = _base_env(workdir)
    env["ACTQ_API_URL"] = f"http://127.0.0.1:{port}"
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    try:
        start_up(stack, port, workdir / "data", model_dir)
        yield name, model_dir, stack
    finally:
        stack.stop()


def test_family_requests_over_http_and_actq_run(family_stack, tmp_path):
    name, model_dir, stack = family_stack
    api = Client(stack.url, timeout=60)
    model = load_model(str(model_dir), device="cpu")
    listed = api._checked(api._get("/v1/models")).json()["models"]
    assert [m["family"] for m in listed] == [FAMILIES[name]]
    job_ids = []
    for endpoint, request in _requests():
        expected = strip_timing(run(endpoint, request, model))
        job = api.submit(endpoint, request)
        final = api.wait(job["id"], timeout=300)
        assert final["status"] == "finished", final
        assert_same_response(strip_timing(api.result_json(job["id"])), expected)
        job_ids.append(job["id"])
        file = tmp_path / f"{len(job_ids)}.json"
        file.write_text(json.dumps(request))
        env = {k: v for k, v in stack.env.items() if not k.startswith("ACTQ_")}
        out = run_actq("run", endpoint, str(file), "--model", str(model_dir), env=env)
        assert out.returncode == 0, out.stderr
        assert_same_response(strip_timing(json.loads(out.stdout)), expected)
    run_view = api._checked(api._get(f"/v1/runs/{job_ids[0]}/0")).json()
    assert run_view["family"] == FAMILIES[name]
    compared = api._checked(
        api._get("/v1/compare", params={"a": f"{job_ids[0]}/0", "b": f"{job_ids[0]}/1"})
    ).json()
    assert f'"family": "{FAMILIES[name]}"' in json.dumps(compared)
