"""The golden AE cases over HTTP: ``actq up --mlp-autoencoder ... --attention-autoencoder ...``
with the AEs each case's ``server`` key names (TDB's file format), judged by the golden
``compare.py``; and what the API says about the served AEs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from api.client import Client, ClientError
from tests.conftest import AE_CASES, _base_env
from tests.shared_dir import GOLDEN
from tests.stack import Stack, free_port, healthy, wait_until

AE_DIR = GOLDEN / "autoencoders"
SERVERS = sorted(
    {
        (c["server"].get("mlpAutoencoder"), c["server"].get("attentionAutoencoder"))
        for c in AE_CASES
    },
    key=str,
)


def _load_compare():
    spec = importlib.util.spec_from_file_location("golden_compare", GOLDEN / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=SERVERS, ids=lambda s: f"{s[0]}+{s[1]}")
def ae_stack(request, tmp_path_factory, golden_model_dir):
    mlp, attention = request.param
    workdir = tmp_path_factory.mktemp("embedded-ae")
    port = free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", env=_base_env(workdir), workdir=workdir)
    args = [
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
        "--model",
        str(golden_model_dir),
    ]
    if mlp:
        args += ["--mlp-autoencoder", str(AE_DIR / mlp)]
    if attention:
        args += ["--attention-autoencoder", str(AE_DIR / attention)]
    try:
        stack.add("up", "up", *args)
        wait_until(lambda: healthy(stack.url), 60, "actq up", stack)
        yield request.param, Client(stack.url, timeout=120)
    finally:
        stack.stop()


def test_golden_ae_cases_over_http(ae_stack):
    compare = _load_compare()
    server, api = ae_stack
    cases = [
        c
        for c in AE_CASES
        if (c["server"].get("mlpAutoencoder"), c["server"].get("attentionAutoencoder")) == server
    ]
    for case in cases:
        try:
            job = api.submit(case["endpoint"], case["request"])
        except ClientError as error:
            assert 400 <= error.status < 500 and case["error"] is not None, (case["name"], error)
            assert compare.compare_case(case, {"error": error.body}) is None
            continue
        final = api.wait(job["id"], timeout=300)
        assert final["status"] == "finished", (case["name"], final)
        recorded = final["autoencoders"]
        assert [None if v is None else v["name"] for v in recorded.values()] == list(server)
        ours = {"response": api.result_json(job["id"])}
        problem = compare.compare_case(case, ours)
        assert problem is None, (case["name"], problem)


def test_v1_models_lists_the_served_autoencoders(ae_stack):
    server, api = ae_stack
    listed = api.models()["models"][0]["autoencoders"]
    assert [ae["name"] for ae in listed] == [name for name in server if name]
    for ae in listed:
        info = json.loads((AE_DIR / ae["name"] / "ae.json").read_text())
        assert ae["layers"] == info["layers"]
        assert len(ae["contentHash"]) == 64
        omitted = 2 if ae["name"] == "ae-resid-delta-mlp-tiny" else 0  # TDB's omission, §9.3
        assert ae["nLatents"] == info["nLatents"] - omitted
