"""``actq run`` (the engine in-process) and ``actq db upgrade``, as a user runs them."""

from __future__ import annotations

import json
import os

from sqlalchemy import inspect

from models.store.db import make_engine
from tests.conftest import ERROR_CASES, OK_CASES, assert_same_response, run_actq, strip_timing


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(extra)
    return env


def test_run_prints_the_engine_response(tmp_path, golden_model_dir, engine_model):
    from models.wire.encoding import dumps
    from worker.engine import run

    case = next(c for c in OK_CASES if c["endpoint"] == "batched_tdb")
    request = tmp_path / "request.json"
    request.write_text(json.dumps(case["request"]))
    out = run_actq("run", "batched_tdb", str(request), "--model", str(golden_model_dir), env=_env())
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert out.stdout.decode().strip() == dumps(printed)
    expected = run("batched_tdb", case["request"], engine_model)
    assert_same_response(strip_timing(printed), strip_timing(expected))


def test_run_reads_stdin_and_model_info_needs_no_body(golden_model_dir):
    out = run_actq("run", "model_info", "--model", str(golden_model_dir), env=_env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["modelName"] == "oracle-gpt2-tiny"
    case = next(c for c in OK_CASES if c["endpoint"] == "derived_scalars")
    out = run_actq(
        "run",
        "derived_scalars",
        "-",
        env=_env(ACTQ_MODEL=str(golden_model_dir)),
        input=json.dumps(case["request"]).encode(),
    )
    assert out.returncode == 0, out.stderr
    assert "derivedScalarsResponseData" in json.loads(out.stdout)


def test_run_request_error_exits_2_with_the_error_on_stderr(tmp_path, golden_model_dir):
    case = next(c for c in ERROR_CASES if c["endpoint"] == "batched_tdb")
    request = tmp_path / "bad.json"
    request.write_text(json.dumps(case["request"]))
    out = run_actq("run", "batched_tdb", str(request), "--model", str(golden_model_dir), env=_env())
    assert (out.returncode, out.stdout) == (2, b"")
    error = json.loads(out.stderr.decode().strip().splitlines()[-1])["error"]
    assert error["message"] and error["type"]
    out = run_actq(
        "run", "batched_tdb", "-", "--model", str(golden_model_dir), env=_env(), input=b"{x"
    )
    assert (out.returncode, out.stdout) == (2, b"")
    error = json.loads(out.stderr.decode().strip().splitlines()[-1])["error"]
    assert "malformed JSON" in error["message"]


def test_db_upgrade_creates_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'actq.db'}"
    out = run_actq("db", "upgrade", env=_env(ACTQ_DATABASE_URL=url))
    assert out.returncode == 0, out.stderr
    engine = make_engine(url)
    assert {"jobs", "runs", "job_tags"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_db_upgrade_on_postgresql_accepts_a_plain_url(pg_empty_url):
    plain = pg_empty_url.replace("postgresql+psycopg://", "postgresql://")
    out = run_actq("db", "upgrade", "--url", plain, env=_env())
    assert out.returncode == 0, out.stderr
    engine = make_engine(plain)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()
