"""Shared passes for many small jobs: 16 queued jobs run together against the same 16 one by one.

Small jobs are `batched_tdb` requests with one sub-request (node table, top tokens, a loss) of
8 tokens, each with another prompt. Two measurements, each a ratio taken in one run:

  * engine: ``worker.engine.run`` 16 times, one after another, against one
    ``worker.engine.run_many`` of the 16 (shared passes); it also checks that every response is
    byte-identical both ways (timing fields aside),
  * service: the full stack (PostgreSQL, Redis, the API, one worker), a burst of 16 jobs
    submitted and waited for, with ``ACTQ_BATCH_JOBS=1`` (one by one) and then with co-batching
    (``--batch-jobs``, default 8): jobs per second both ways.

    python benchmarks/cobatch.py [--jobs 16] [--repeats 3] [--models tiny-gpt2 gpt2-small-random]
    python benchmarks/cobatch.py --quick   # tiny-gpt2, 3 jobs, once: does it still run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api.client import Client  # noqa: E402

TIMING = {"inferenceTime", "memoryUsedBefore", "memoryUsedAfter"}
WORDS = "cat dog bird fish tree house river cloud stone apple chair light wind road book door"


def prompts(tokenizer, n: int, tokens: int = 8) -> list[str]:
    """``n`` different prompts of exactly ``tokens`` tokens."""
    words = WORDS.split()
    out = []
    for i in range(n):
        text = f"The {words[i % len(words)]}"
        j = i
        while len(tokenizer.encode(text)) < tokens:
            j += 1
            text += f" {words[j % len(words)]}"
        assert len(tokenizer.encode(text)) == tokens, text
        out.append(text)
    return out


def small_request(prompt: str) -> dict:
    return {
        "subRequests": [
            {
                "prompt": prompt,
                "targetTokens": [" the"],
                "distractorTokens": [" a"],
                "componentTypeForMlp": "neuron",
                "componentTypeForAttention": "attention_head",
                "topAndBottomKForNodeTable": 5,
                "hideEarlyLayersWhenAblating": False,
                "nodeAblations": [],
                "upstreamNodeToTrace": None,
                "downstreamNodeToTrace": None,
            }
        ]
    }


def _stripped(value):
    if isinstance(value, dict):
        return {k: None if k in TIMING else _stripped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def bench_engine(model, requests: list[dict], repeats: int) -> tuple[float, float, bool]:
    """(seconds one by one, seconds shared, identical) for the requests, medians of repeats."""
    from models.wire.encoding import dumps
    from worker.engine import run, run_many

    run("batched_tdb", requests[0], model)  # warm-up
    alone, shared, same = [], [], True
    for _ in range(repeats):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        one_by_one = [run("batched_tdb", r, model) for r in requests]
        alone.append(time.perf_counter() - start)
        start = time.perf_counter()
        together = run_many([("batched_tdb", r) for r in requests], model)
        shared.append(time.perf_counter() - start)
        same = same and [dumps(_stripped(a)) for a in one_by_one] == [
            dumps(_stripped(t)) for t in together
        ]
    return statistics.median(alone), statistics.median(shared), same


def burst_seconds(client: Client, requests: list[dict]) -> float:
    start = time.perf_counter()
    jobs = [client.submit("batched_tdb", r, fresh=True) for r in requests]
    for job in jobs:
        final = client.wait(job["id"], timeout=1800)
        assert final["status"] == "finished", final
    return time.perf_counter() - start


def bench_service(spec, requests, args, db_server, broker, workdir: Path) -> tuple[float, float]:
    """(seconds one by one, seconds co-batched) for a burst of the requests, one worker."""
    import service

    timings = {}
    for batch_jobs in (1, args.batch_jobs):
        folder = workdir / f"stack-{Path(spec).name}-{batch_jobs}"
        folder.mkdir()
        stack = service.start_stack(
            folder, service.fresh_database(db_server), broker, spec, workdir / "data"
        )
        try:
            stack.processes.pop("worker1").stop()  # its replacement runs with ACTQ_BATCH_JOBS
            stack.env["ACTQ_BATCH_JOBS"] = str(batch_jobs)
            service.add_worker(stack, "worker")
            client = Client(stack.url, timeout=120)
            burst_seconds(client, requests[:2])  # warm-up: model load, first-call costs
            timings[batch_jobs] = statistics.median(
                burst_seconds(client, requests) for _ in range(args.repeats)
            )
        finally:
            stack.stop()
    return timings[1], timings[args.batch_jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-jobs", type=int, default=8, help="ACTQ_BATCH_JOBS when shared")
    parser.add_argument("--models", nargs="+", default=["tiny-gpt2", "gpt2-small-random"])
    parser.add_argument("--skip-service", action="store_true", help="the engine figures only")
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2, 3 jobs, once")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeats, args.models = 3, 1, ["tiny-gpt2"]
    import service

    from models.model_meta import resolve_model
    from models.tokenizer import load_tokenizer
    from worker.engine import load_model

    with tempfile.TemporaryDirectory(prefix="actq-cobatch-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        data_dir = workdir / "data"
        stop = lambda: None  # noqa: E731
        if not args.skip_service:
            db_server, broker, stop = service.services(workdir)
        try:
            print(f"machine: {os.cpu_count()} CPUs; CPU float32; {args.jobs} small jobs")
            for name in args.models:
                spec = name
                if name == "gpt2-small-random":
                    from engine import build_model

                    build_model(workdir / name)
                    spec = str(workdir / name)
                tokenizer = load_tokenizer(resolve_model(spec, data_dir))
                requests = [small_request(p) for p in prompts(tokenizer, args.jobs)]
                model = load_model(spec, device="cpu", data_dir=data_dir)
                alone, shared, same = bench_engine(model, requests, args.repeats)
                print(f"\n{name}: batched_tdb, 1 sub-request of 8 tokens per job")
                print(
                    f"  engine   one by one {alone:8.3f} s   shared passes {shared:8.3f} s   "
                    f"{alone / shared:5.2f} x the throughput   byte-identical: {same}"
                )
                del model
                if not args.skip_service:
                    one, batched = bench_service(spec, requests, args, db_server, broker, workdir)
                    print(
                        f"  service  one by one {one:8.3f} s   ACTQ_BATCH_JOBS={args.batch_jobs:<3d}"
                        f"{batched:8.3f} s   {one / batched:5.2f} x the throughput"
                    )
                sys.stdout.flush()
        finally:
            stop()


if __name__ == "__main__":
    main()
