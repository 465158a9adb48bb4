"""Memory of ``GET /v1/compare`` on the largest runs the cost limits allow.

Serves the golden model (or ``--model``) on SQLite with a filesystem broker, finds the most
``batched_tdb`` sub-requests of a near-context prompt with a node table of ``--k`` that the API
accepts (its cost estimate under the default limits), runs that request and an ablated twin
through the real worker logic and engine, then, each in a fresh process, compares run 0 of the
first with the last run of the second and reports the process's peak resident memory above
what it held before: through the API route (runs read as streams, ``models.store.response_stream``)
and as the route did before (each response decompressed and ``json.loads``-ed whole).

    flock /tmp/actq-bigmem.lock python benchmarks/compare.py [--k 1000] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine import PeakRss, rss_bytes  # noqa: E402

GOLDEN_MODEL = ROOT.parent / "shared" / "golden" / "oracle-gpt2-tiny"


def make_app(data: Path, model: str):
    from api.app import create_app

    return create_app(
        {
            "TESTING": True,
            "data_dir": data,
            "database_url": f"sqlite:///{data / 'actq.db'}",
            "broker_url": f"filesystem://{data / 'broker'}",
            "model": model,
        }
    )


def request_of(prompt: str, subs: int, k: int, ablated: bool) -> dict:
    ablation = {
        "nodeIndex": {
            "nodeType": "mlp_neuron",
            "tensorIndices": [2, 10],
            "layerIndex": 1,
            "passType": "forward",
        },
        "value": 0.0,
    }
    sub = {
        "prompt": prompt,
        "targetTokens": [" the"],
        "distractorTokens": [" a"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": k,
        "hideEarlyLayersWhenAblating": False,
        "nodeAblations": [ablation] if ablated else None,
    }
    return {"subRequests": [copy.deepcopy(sub) for _ in range(subs)]}


def largest_accepted(client, prompt: str, k: int, most: int) -> int:
    """The most sub-requests the API accepts (202) for this prompt and k; 0 if none."""
    low, high = 0, most
    while low < high:
        mid = (low + high + 1) // 2
        answer = client.post("/v1/batched_tdb?fresh=1", json=request_of(prompt, mid, k, False))
        if answer.status_code == 202:
            low = mid
        else:
            assert answer.status_code == 422, answer.get_json()
            high = mid - 1
    return low


def build(data: Path, model: str, tokens: int, k: int, most: int) -> tuple[str, str, int]:
    import migrations
    from worker.engine import load_model
    from worker.execution import execute_job

    migrations.upgrade(f"sqlite:///{data / 'actq.db'}")
    app = make_app(data, model)
    client = app.test_client()
    prompt = " ".join(["the cat sat on the mat"] * max(1, tokens // 6))  # 6 tokens each
    subs = largest_accepted(client, prompt, k, most)
    assert subs > 0, "the cost limits accept no sub-request of this shape"
    loaded = load_model(model, device="cpu")
    sessions = app.extensions["actq.sessionmaker"]
    ids = []
    for ablated in (False, True):
        answer = client.post("/v1/batched_tdb?fresh=1", json=request_of(prompt, subs, k, ablated))
        job_id = answer.get_json()["id"]
        assert execute_job(sessions, job_id, model=lambda: loaded) == "finished"
        ids.append(job_id)
    return ids[0], ids[1], subs


def measure(data: Path, model: str, a: str, b: str, how: str) -> None:
    """In this (fresh) process: the peak RSS growth of one comparison, printed as JSON."""
    import api.comparison  # noqa: F401  (imported before, so that imports do not count)
    import api.run_views  # noqa: F401
    import models.store.response_stream  # noqa: F401

    app = make_app(data, model)
    client = app.test_client()
    client.get("/healthz")
    with app.app_context():
        from models.store.tables import Job

        sessions = app.extensions["actq.sessionmaker"]
        with sessions() as session:
            sizes = [session.get(Job, j).response_size for j in (a.split("/")[0], b.split("/")[0])]
    before = rss_bytes()
    with PeakRss() as peak:
        if how == "route":
            answer = client.get(f"/v1/compare?a={a}&b={b}")
            assert answer.status_code == 200, answer.get_json()
            size = len(answer.data)
        else:
            size = len(whole_responses_compare(app, a, b))
    print(json.dumps({"peak": peak.peak - before, "answer": size, "responses": sizes}))


def whole_responses_compare(app, a: str, b: str) -> bytes:
    """The route as it was: each job's response decompressed and parsed whole, then compared."""
    from api.comparison import compare
    from api.run_views import side_of
    from models.store.history import find_run
    from models.store.jobs import response_bytes

    with app.test_request_context():
        from api.database import get_session

        session = get_session()
        runs = [find_run(session, address, name) for address, name in ((a, "a"), (b, "b"))]
        sides = []
        for run in runs:
            whole = json.loads(response_bytes(run.job))
            part = (whole.get("inferenceSubResponses") or [])[run.index]
            sides.append(side_of(run, part))
            del whole
        return json.dumps(compare(*sides)).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(GOLDEN_MODEL))
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--most", type=int, default=64, help="sub-requests to try at most")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the tests)")
    parser.add_argument("--measure", nargs=4, metavar=("DATA", "A", "B", "HOW"))
    args = parser.parse_args()
    if args.measure:
        data, a, b, how = args.measure
        measure(Path(data), args.model, a, b, how)
        return
    if args.quick:
        args.k, args.tokens, args.most = 20, 12, 4
    with tempfile.TemporaryDirectory(prefix="actq-compare-") as tmp:
        data = Path(tmp)
        a, b, subs = build(data, args.model, args.tokens, args.k, args.most)
        pair = (f"{a}/0", f"{b}/{subs - 1}")
        print(f"runs: batched_tdb, {subs} sub-requests of {args.tokens} tokens, k {args.k}")
        print(f"{'path':<34} {'responses MiB':>14} {'answer MiB':>11} {'peak RSS MiB':>13}")
        for how, label in (
            ("route", "route (streamed runs)"),
            ("whole", "before (whole responses)"),
        ):
            done = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--measure", tmp, *pair, how],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
            got = json.loads(done.stdout.strip().splitlines()[-1])
            responses = "+".join(f"{s / 2**20:.1f}" for s in got["responses"])
            print(
                f"{label:<34} {responses:>14} {got['answer'] / 2**20:>11.1f} "
                f"{got['peak'] / 2**20:>13.1f}"
            )


if __name__ == "__main__":
    main()
