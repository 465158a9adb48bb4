"""What the job service adds on top of the engine, on the full stack, and its throughput.

Starts PostgreSQL and Redis (scripts/services.sh, unless ACTQ_TEST_DATABASE_URL and
ACTQ_TEST_BROKER_URL name running ones), the API under gunicorn and ``actq worker`` processes,
then for the built-in tiny-gpt2 and a gpt2-small-sized random model (GPT2Config, no download)
prints:

  * submit -> result: the wall-clock time from POST /v1/batched_tdb to having the response bytes
    (long-polling the result), for a clean and an ablated sub-request of 20 tokens; median of 20,
  * the engine time of the same jobs (measured in the worker) and of the same request run by
    ``worker.engine.run`` in this process, and the service overhead (submit -> result minus the
    worker's engine time) in ms and as a share of the engine time,
  * throughput: jobs per second for a burst of jobs with one worker, then with two.

    python benchmarks/service.py [--repeats 20] [--burst 40] [--models tiny-gpt2 gpt2-small-random]
    python benchmarks/service.py --quick   # tiny-gpt2, 2 jobs, a burst of 2: does it still run
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api.client import Client  # noqa: E402
from tests.stack import Stack, free_port, healthy, wait_until, worker_ready  # noqa: E402


def services(workdir: Path) -> tuple[str, str, callable]:
    if os.environ.get("ACTQ_TEST_DATABASE_URL") and os.environ.get("ACTQ_TEST_BROKER_URL"):
        return (
            os.environ["ACTQ_TEST_DATABASE_URL"],
            os.environ["ACTQ_TEST_BROKER_URL"],
            lambda: None,
        )
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/services.sh"), "start", str(workdir / "services")],
        check=True,
        capture_output=True,
        text=True,
    )
    urls = export_lines(out.stdout)
    stop = lambda: subprocess.run(  # noqa: E731
        ["bash", str(ROOT / "scripts/services.sh"), "stop", str(workdir / "services")], check=False
    )
    return urls["ACTQ_TEST_DATABASE_URL"], urls["ACTQ_TEST_BROKER_URL"], stop


def export_lines(text: str) -> dict[str, str]:
    """``{NAME: VALUE}`` of the ``export NAME=VALUE`` lines that ``scripts/services.sh`` prints."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", text, flags=re.MULTILINE))


def fresh_database(server_url: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.store.db import make_engine

    name = f"actq_bench_{secrets.token_hex(4)}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(server_url.replace("postgresql://", "postgresql+psycopg://", 1))
    return url.set(database=name).render_as_string(hide_password=False)


def start_stack(workdir: Path, db: str, broker: str, model: str, data_dir: Path) -> Stack:
    import redis

    import migrations

    migrations.upgrade(db)
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(
        ACTQ_DATABASE_URL=db,
        ACTQ_BROKER_URL=broker,
        ACTQ_MODEL=model,
        ACTQ_DATA_DIR=str(data_dir),
        ACTQ_DEVICE="cpu",
        PYTHONPATH=str(ROOT),
    )
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2")
    add_worker(stack, "worker1")
    wait_until(lambda: healthy(stack.url), 60, "API", stack)
    return stack


POOL = ["prefork"]
# Two CPU workers on one machine share its cores: each gets its share of torch threads, or they
# oversubscribe the cores and both crawl. (A GPU worker needs few CPU threads.)
THREADS_PER_WORKER_OF_TWO = max(1, (os.cpu_count() or 2) // 2)


def add_worker(stack: Stack, name: str) -> None:
    worker = stack.add(name, "worker", "--pool", POOL[0])
    wait_until(lambda: worker_ready(worker), 300, name, stack)


def submit_to_result(client: Client, request: dict) -> tuple[float, str, dict[str, float]]:
    """Seconds from submit to the response bytes, the job's id, and the client's clock (epoch
    seconds) at the start, once the submit answered, and at the end."""
    clock = {"start": time.time()}
    start = time.perf_counter()
    job = client.submit("batched_tdb", request, fresh=True)
    clock["submitted"] = time.time()
    status, _body = client.result(job["id"], wait=120)
    while status == 202:
        status, _body = client.result(job["id"], wait=120)
    elapsed = time.perf_counter() - start
    clock["end"] = time.time()
    assert status == 200, (status, _body[:300])
    return elapsed, job["id"], clock


def breakdown(job: dict, e2e: float, clock: dict[str, float]) -> dict[str, float]:
    """Where the service's time went: the submit request until the job's row is written,
    waiting to be claimed, the worker's own work around the engine (claim, compress, store),
    and delivering the result to the client (its stored row to the response's last byte). The
    clocks are this machine's: the client's and the job's timestamps (written by the API and
    the worker) are on the same one."""
    created, started, finished = (
        dt.datetime.fromisoformat(job[k]).timestamp()
        for k in ("createdAt", "startedAt", "finishedAt")
    )
    return {
        "submit": created - clock["start"],
        "answered": clock["submitted"] - created,  # the submit's commit, publish and answer
        "queued": started - created,
        "worker": finished - started - job["engineSeconds"],
        "delivery": clock["end"] - finished,
    }


def throughput(client: Client, request: dict, burst: int) -> float:
    start = time.perf_counter()
    jobs = [client.submit("batched_tdb", request, fresh=True) for _ in range(burst)]
    for job in jobs:
        final = client.wait(job["id"], timeout=1800)
        assert final["status"] == "finished", final
    return burst / (time.perf_counter() - start)


def load_in_process(spec: str, data_dir: Path):
    from worker.engine import load_model, run

    model = load_model(spec, device="cpu", data_dir=data_dir)
    run("model_info", None, model)
    return model


def in_process_seconds(request: dict, model) -> float:
    from worker.engine import run

    start = time.perf_counter()
    run("batched_tdb", request, model)
    return time.perf_counter() - start


def bench_model(name: str, spec: str, args, db_server: str, broker: str, workdir: Path) -> None:
    from engine import prompt_of, tdb_request

    from models.model_meta import resolve_model
    from models.tokenizer import load_tokenizer

    data_dir = workdir / "data"
    request = tdb_request(prompt_of(load_tokenizer(resolve_model(spec, data_dir)), 20))
    for sub in request["subRequests"]:  # layer 0 exists in every model (tiny-gpt2 has 2 layers)
        for ablation in sub["nodeAblations"]:
            ablation["nodeIndex"]["layerIndex"] = 0
    (workdir / f"stack-{name}").mkdir()
    stack = start_stack(
        workdir / f"stack-{name}", fresh_database(db_server), broker, spec, data_dir
    )
    client = Client(stack.url, timeout=120)
    local_model = load_in_process(spec, data_dir)
    try:
        for _ in range(1 if args.quick else 3):
            submit_to_result(client, request)  # warm-up: model load, first-call costs
        e2e, engine, local, parts = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            seconds, job_id, clock = submit_to_result(client, request)
            job = client.status(job_id)
            e2e.append(seconds)
            engine.append(job["engineSeconds"])
            parts.append(breakdown(job, seconds, clock))
            local.append(in_process_seconds(request, local_model))
        overhead = [a - b for a, b in zip(e2e, engine, strict=True)]
        one = two = None
        if not args.skip_throughput:
            one = throughput(client, request, args.burst)
            stack.processes.pop("worker1").stop()
            stack.env["ACTQ_TORCH_THREADS"] = str(THREADS_PER_WORKER_OF_TWO)
            add_worker(stack, "worker2")
            add_worker(stack, "worker3")
            throughput(client, request, 4)  # warm both workers
            two = throughput(client, request, args.burst)
    finally:
        stack.stop()
    local = statistics.median(local)
    med_e2e, med_engine, med_over = (statistics.median(x) for x in (e2e, engine, overhead))
    print(f"\n{name} (batched_tdb, clean + ablated, 20 tokens; {args.repeats} jobs, medians)")
    print(f"  submit -> result            {med_e2e * 1000:9.1f} ms")
    print(f"  engine time in the worker   {med_engine * 1000:9.1f} ms")
    print(f"  engine time in-process      {local * 1000:9.1f} ms")
    print(
        f"  service overhead            {med_over * 1000:9.1f} ms ({med_over / med_engine:.1%} of engine)"
    )
    for label, key in (
        ("  of which: submit -> stored ", "submit"),
        ("            stored -> claimed", "queued"),
        ("            worker, not engine", "worker"),
        ("            finished -> client", "delivery"),
        ("  (stored -> submit answered)", "answered"),
    ):
        print(f"{label}   {statistics.median(p[key] for p in parts) * 1000:9.1f} ms")
    if one is not None:
        print(f"  throughput, 1 worker        {one:9.2f} jobs/s  (burst of {args.burst})")
        print(
            f"  throughput, 2 workers       {two:9.2f} jobs/s  (burst of {args.burst}, "
            f"{THREADS_PER_WORKER_OF_TWO} torch threads each)"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed jobs per model")
    parser.add_argument("--burst", type=int, default=40, help="jobs per throughput burst")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny-gpt2", "gpt2-small-random"],
        help="built-in model names or folders; gpt2-small-random is built here",
    )
    parser.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo"], help="the workers' Celery pool"
    )
    parser.add_argument(
        "--skip-throughput", action="store_true", help="time single jobs only, no bursts"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny-gpt2, 2 jobs, no throughput: checks that the benchmark runs (figures mean nothing)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.models, args.skip_throughput = 2, ["tiny-gpt2"], True
        args.pool = "solo"  # no pool process to fork and load the model again
    POOL[0] = args.pool
    with tempfile.TemporaryDirectory(prefix="actq-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        db_server, broker, stop = services(workdir)
        try:
            print(f"machine: {os.cpu_count()} CPUs; PostgreSQL and Redis on loopback; CPU float32")
            for name in args.models:
                spec = name
                if name == "gpt2-small-random":
                    from engine import build_model

                    directory = workdir / "gpt2-small-random"
                    build_model(directory)
                    spec = str(directory)
                bench_model(name, spec, args, db_server, broker, workdir)
        finally:
            stop()


if __name__ == "__main__":
    main()
