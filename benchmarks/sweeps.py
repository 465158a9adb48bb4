"""A sweep of every head against the same points as single jobs one after another, and against
the forward+backward floor of the same number of sequences.

For tiny-gpt2 (the built-in model, 2 layers x 4 heads) and a gpt2-small-sized random model (12 x
12 = 144 points), at a prompt of 20 tokens, value 0 at the last token, it measures in one process
on one SQLite database:
  * singles: the baseline and every point as its own job, each through ``execute_job`` (claim,
    engine, store: the worker's whole path for a job, without HTTP and Celery), one after another;
  * sweep: the same points as one sweep through ``execute_sweep`` (jobs made, passes, stored);
  * floor: Hugging Face GPT2LMHeadModel forward+backward of the same number of sequences, in one
    padded batch, with the weights trainable and frozen (activation gradients only).

    python benchmarks/sweeps.py [--tokens 20] [--models tiny-gpt2 gpt2-small]
    python benchmarks/sweeps.py --quick   # tiny-gpt2, 8 tokens: does it still run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is a local directory

from engine import GPT2_SMALL, build_model, prompt_of  # noqa: E402


def base_request(prompt: str) -> dict:
    return {
        "subRequests": [
            {
                "prompt": prompt,
                "targetTokens": [" mat"],
                "distractorTokens": [" dog"],
                "componentTypeForMlp": "neuron",
                "componentTypeForAttention": "attention_head",
                "topAndBottomKForNodeTable": 5,
                "hideEarlyLayersWhenAblating": False,
                "nodeAblations": None,
                "upstreamNodeToTrace": None,
                "downstreamNodeToTrace": None,
            }
        ]
    }


def _database(folder: Path):
    import migrations
    from models.store.db import make_engine, make_sessionmaker

    url = f"sqlite:///{folder / 'bench.db'}"
    migrations.upgrade(url)
    return make_sessionmaker(make_engine(url))


def _points(loaded, base):
    from models.checks.sweeps import Base, grid_points, point_request
    from models.wire.sweeps import SweepGrid

    sub = Base("batched_tdb", base, "base")
    n_tokens = len(loaded.tokenizer.encode(sub.prompt))
    points = grid_points(SweepGrid(heads="all"), loaded.meta, n_tokens, 10_000)
    return sub, points, [point_request(sub, p, p.value) for p in points]


def singles(sessions, loaded, requests: list[dict]) -> float:
    from models.store.jobs import create_job
    from worker.execution import execute_job

    with sessions.begin() as session:
        ids = [
            create_job(
                session,
                endpoint="batched_tdb",
                model=loaded.name,
                model_revision=None,
                request=r,
            ).id
            for r in requests
        ]
    start = time.perf_counter()
    for job_id in ids:
        assert execute_job(sessions, job_id, model=lambda: loaded) == "finished"
    return time.perf_counter() - start


def sweep(sessions, loaded, base, points) -> tuple[float, int]:
    from models.checks.cost import estimate_cost
    from models.checks.sweeps import point_request
    from models.store.sweeps import create_sweep
    from models.wire.protocol import parse_request
    from worker.sweeps import MAX_PASS, execute_sweep

    parsed = parse_request("batched_tdb", point_request(base, points[0], 0.0))
    cost = estimate_cost("batched_tdb", parsed, loaded.meta, loaded.tokenizer)
    with sessions.begin() as session:
        made = create_sweep(
            session,
            [p.as_dict() for p in points],
            model=loaded.name,
            model_revision=None,
            autoencoders=None,
            endpoint="batched_tdb",
            base_request=base.request,
            grid={"heads": "all"},
            node=None,
            node_group="act_times_grad",
            point_memory_bytes=cost.memory_bytes,
            tags=[],
        )
        sweep_id = made.id
    budget = 8 << 30
    start = time.perf_counter()
    status = execute_sweep(
        sessions,
        sweep_id,
        model=lambda: loaded,
        worker="bench",
        lease_seconds=600,
        max_attempts=1,
        memory_budget=budget,
    )
    assert status == "finished", status
    return time.perf_counter() - start, max(1, min(MAX_PASS, budget // cost.memory_bytes))


def floor(model_dir: str, tokens: list[int], n: int) -> tuple[float, float]:
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    batch = torch.tensor([tokens] * n)

    def once(frozen: bool) -> float:
        start = time.perf_counter()
        if frozen:
            x = hf.get_input_embeddings()(batch).detach().requires_grad_(True)
            logits = hf(inputs_embeds=x).logits
        else:
            logits = hf(batch).logits
        (logits[:, -1, 100] - logits[:, -1, 200]).sum().backward()
        hf.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    once(False)
    trainable = min(once(False) for _ in range(2))
    for p in hf.parameters():
        p.requires_grad_(False)
    frozen = min(once(True) for _ in range(2))
    return trainable, frozen


def measure(name: str, n_tokens: int, folder: Path) -> dict:
    from worker.engine import load_model

    if name == "tiny-gpt2":
        from models.model_meta import tiny_gpt2_dir

        loaded = load_model("tiny-gpt2", device="cpu", data_dir=folder)
        model_dir = str(tiny_gpt2_dir(folder))
    else:
        model_dir = str(folder / name)
        Path(model_dir).mkdir()
        build_model(Path(model_dir), "gpt2", GPT2_SMALL)
        loaded = load_model(model_dir, device="cpu")
    prompt = prompt_of(loaded.tokenizer, n_tokens)
    base, points, requests = _points(loaded, base_request(prompt))
    sessions = _database(folder)
    one_by_one = singles(sessions, loaded, [base.request, *requests])
    swept, per_pass = sweep(sessions, loaded, base, points)
    hf, hf_frozen = floor(model_dir, loaded.tokenizer.encode(prompt), len(points) + 1)
    return {
        "model": name,
        "points": len(points),
        "tokens": n_tokens,
        "singles": one_by_one,
        "sweep": swept,
        "perPass": per_pass,
        "hf": hf,
        "hfFrozen": hf_frozen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["tiny-gpt2", "gpt2-small"])
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2, 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.models = 8, ["tiny-gpt2"]
    import torch

    print(f"torch threads {torch.get_num_threads()}; times in seconds, one run each")
    header = (
        f"{'model':<12} {'points':>6} {'tokens':>6} {'singles':>8} {'sweep':>8} "
        f"{'speedup':>8} {'HF f+b':>8} {'sweep/HF':>9} {'HF frozen':>9} {'sweep/frozen':>12}"
    )
    print(header)
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(name, args.tokens, Path(tmp))
        print(
            f"{r['model']:<12} {r['points']:>6} {r['tokens']:>6} {r['singles']:>8.2f} "
            f"{r['sweep']:>8.2f} {r['singles'] / r['sweep']:>7.2f}x {r['hf']:>8.2f} "
            f"{r['sweep'] / r['hf']:>9.2f} {r['hfFrozen']:>9.2f} {r['sweep'] / r['hfFrozen']:>12.2f}"
        )


if __name__ == "__main__":
    main()
