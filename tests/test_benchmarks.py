"""Every benchmark in ``benchmarks/`` still runs: each once with ``--quick`` (tiny sizes; the
figures it prints mean nothing here). ``benchmarks/service.py`` once failed before measuring
anything, which nobody saw because nothing ran it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BENCHMARKS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))
# another Redis database than the one the session's stacks use: the service benchmark flushes it
BENCH_REDIS_DB = 7


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_every_benchmark_is_covered():
    # a new one gets its run below
    assert BENCHMARKS == [
        "autoencoders.py",
        "cobatch.py",
        "compare.py",
        "cost.py",
        "engine.py",
        "records.py",
        "service.py",
        "sweeps.py",
    ]


def test_the_autoencoder_benchmark_runs_quick():
    done = _run("autoencoders.py", _env())
    assert re.search(r"^\s+8\s+[\d.]+\s", done.stdout, flags=re.MULTILINE), done.stdout


def test_the_cost_benchmark_runs_quick():
    done = _run("cost.py", _env())
    assert len(done.stdout.strip().splitlines()) == 3, done.stdout  # header and two shapes


def test_the_compare_benchmark_runs_quick():
    done = _run("compare.py", _env())
    assert re.search(r"^route \(streamed runs\)\s+[\d.+]+\s+[\d.]+\s+[\d.]+$", done.stdout, re.M)
    assert "before (whole responses)" in done.stdout, done.stdout


def test_the_records_benchmark_runs_quick():
    done = _run("records.py", _env())
    assert "forward passes alone:" in done.stdout and "records, build + encode" in done.stdout


def test_the_engine_benchmark_runs_quick():
    done = _run("engine.py", _env())
    assert re.search(r"^batched_tdb\s+8\s", done.stdout, flags=re.MULTILINE), done.stdout
    counted = re.findall(r"vocabulary GEMM of (\d+) directions", done.stdout)
    # the UI pair scores directions (the node tables none): the floor counts its GEMM rows
    assert any(int(n) > 0 for n in counted), done.stdout
    assert re.search(r"^multiple_top_k_derived_scalars\s+8\s", done.stdout, flags=re.MULTILINE)


def test_the_sweeps_benchmark_runs_quick():
    done = _run("sweeps.py", _env())
    assert re.search(r"^tiny-gpt2\s+8\s+8\s+[\d.]+\s+[\d.]+\s+[\d.]+x", done.stdout, re.M), (
        done.stdout
    )


def test_the_cobatch_benchmark_runs_quick(pg_server_url, redis_url):
    broker = re.sub(r"/\d+$", "", redis_url) + f"/{BENCH_REDIS_DB}"
    env = _env(ACTQ_TEST_DATABASE_URL=pg_server_url, ACTQ_TEST_BROKER_URL=broker)
    done = _run("cobatch.py", env)
    assert "byte-identical: True" in done.stdout, done.stdout
    assert re.search(r"service +one by one +[\d.]+ s", done.stdout), done.stdout


def test_the_service_benchmark_runs_quick(pg_server_url, redis_url):
    broker = re.sub(r"/\d+$", "", redis_url) + f"/{BENCH_REDIS_DB}"
    env = _env(ACTQ_TEST_DATABASE_URL=pg_server_url, ACTQ_TEST_BROKER_URL=broker)
    done = _run("service.py", env)
    assert "tiny-gpt2 (batched_tdb" in done.stdout, done.stdout
    assert re.search(r"submit -> result\s+[\d.]+ ms", done.stdout), done.stdout


def test_services_sh_export_lines_are_read():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import service
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    printed = "export A_URL=postgresql://x@127.0.0.1:1/postgres\nexport B_URL=redis://h:2/0\n"
    assert service.export_lines(printed) == {
        "A_URL": "postgresql://x@127.0.0.1:1/postgres",
        "B_URL": "redis://h:2/0",
    }


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
