"""Shared fixtures: golden cases, databases, the Flask app, the engine, and whole running stacks.

PostgreSQL and Redis come from the services ``.ci/run`` starts: their URLs are read from
``ACTQ_TEST_DATABASE_URL`` (a server URL whose user may create databases) and
``ACTQ_TEST_BROKER_URL`` (a Redis database that tests may flush). Without them the tests that need
them are skipped, saying so. Each test session gets its own fresh PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import pytest

from tests.shared_dir import GOLDEN
from tests.stack import Stack, free_port, healthy, start_up, wait_until, worker_ready

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = GOLDEN
GOLDEN_MODEL = GOLDEN_DIR / "oracle-gpt2-tiny"
GOLDEN_MODEL_NAME = "oracle-gpt2-tiny"
TIMING_FIELDS = {"inferenceTime", "memoryUsedBefore", "memoryUsedAfter"}


def load_cases() -> list[dict]:
    cases = []
    for path in sorted((GOLDEN_DIR / "cases").glob("*.json")):
        case = json.loads(path.read_text())
        case["name"] = path.stem
        cases.append(case)
    return cases


def needs_autoencoders(case: dict) -> bool:
    """The 1NN cases were recorded with TDB's autoencoders loaded (their ``server`` key)."""
    return any((case.get("server") or {}).values())


ALL_GOLDEN_CASES = load_cases() if GOLDEN_DIR.is_dir() else []
# The cases a server without autoencoders answers (001-076); the AE cases have their own stacks.
GOLDEN_CASES = [c for c in ALL_GOLDEN_CASES if not needs_autoencoders(c)]
AE_CASES = [c for c in ALL_GOLDEN_CASES if needs_autoencoders(c)]
OK_CASES = [c for c in GOLDEN_CASES if c.get("error") is None]
ERROR_CASES = [c for c in GOLDEN_CASES if c.get("error") is not None]


def case_ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


def strip_timing(value):
    """A response without the fields that measure time and memory."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def assert_same_response(actual, expected, path: str = "") -> None:
    """Equal up to float rounding (rel 1e-5): same keys in the same order, same values."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert list(actual) == list(expected), path
        for key in expected:
            assert_same_response(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_response(a, e, f"{path}.{i}")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), path
    else:
        assert actual == expected, path


# --- plain resources ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def golden_model_dir() -> Path:
    if not GOLDEN_MODEL.is_dir():
        pytest.skip(f"golden model not found at {GOLDEN_MODEL} (set ACTQ_SHARED_DIR)")
    return GOLDEN_MODEL


@pytest.fixture(scope="session")
def engine_model(golden_model_dir):
    """The golden model loaded by the engine in the test process (the reference for results)."""
    engine = pytest.importorskip("worker.engine")
    return engine.load_model(str(golden_model_dir), device="cpu")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    import migrations

    url = f"sqlite:///{tmp_path / 'actq.db'}"
    migrations.upgrade(url)
    return url


def _service_url(variable: str, what: str) -> str:
    url = os.environ.get(variable)
    if not url:
        message = f"{variable} is not set ({what} is started by scripts/test.sh and .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run every test")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _service_url("ACTQ_TEST_DATABASE_URL", "PostgreSQL")


def _create_pg_database(server_url: str) -> tuple[str, str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.store.db import make_engine

    name = f"actq_test_{secrets.token_hex(4)}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(server_url.replace("postgresql://", "postgresql+psycopg://", 1))
    return name, url.set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(server_url: str, name: str) -> None:
    from sqlalchemy import text

    from models.store.db import make_engine

    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_empty_url(pg_server_url):
    """A new, empty PostgreSQL database for one test."""
    name, url = _create_pg_database(pg_server_url)
    yield url
    _drop_pg_database(pg_server_url, name)


@pytest.fixture
def pg_url(pg_empty_url) -> str:
    """A new PostgreSQL database with the schema migrated."""
    import migrations

    migrations.upgrade(pg_empty_url)
    return pg_empty_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """The migrated database of each backend in turn."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sessions(db_url):
    from models.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _service_url("ACTQ_TEST_BROKER_URL", "Redis")


# --- the Flask app --------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path, sqlite_url, golden_model_dir):
    """The API on SQLite with a filesystem broker in a temporary folder; nothing consumes it."""
    from api.app import create_app

    return create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": sqlite_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def app_sessions(app):
    return app.extensions["actq.sessionmaker"]


def queued_messages(tmp_path: Path) -> list[str]:
    folder = tmp_path / "broker" / "queue"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# --- whole running stacks -------------------------------------------------------------------


def _base_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTQ_")}
    env.update(
        ACTQ_DATA_DIR=str(workdir / "data"),
        ACTQ_DEVICE="cpu",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def full_stack(tmp_path_factory, pg_server_url, redis_url, golden_model_dir):
    """PostgreSQL, Redis, the API under gunicorn and two ``actq worker`` processes."""
    workdir = tmp_path_factory.mktemp("full-stack")
    name, db = _create_pg_database(pg_server_url)
    _flush_redis(redis_url)
    port = free_port()
    env = _base_env(workdir)
    env.update(
        ACTQ_DATABASE_URL=db,
        ACTQ_BROKER_URL=redis_url,
        ACTQ_MODEL=str(golden_model_dir),
        ACTQ_API_URL=f"http://127.0.0.1:{port}",
    )
    migrate = run_actq("db", "upgrade", env=env)  # as the compose file's migrate service
    assert migrate.returncode == 0, migrate.stderr
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.database_url = db
    try:
        stack.add("api", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2")
        workers = [stack.add(f"worker{i}", "worker", "--pool", "prefork") for i in (1, 2)]
        wait_until(lambda: healthy(stack.url), 60, "API", stack)
        for worker in workers:
            wait_until(lambda w=worker: worker_ready(w), 120, worker.name, stack)
        yield stack
    finally:
        stack.stop()
        _drop_pg_database(pg_server_url, name)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory, golden_model_dir):
    """``actq up`` on the golden model: SQLite, filesystem broker, API and one worker."""
    workdir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = _base_env(workdir)
    env["ACTQ_API_URL"] = f"http://127.0.0.1:{port}"
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    data_dir = workdir / "data"
    stack.data_dir = data_dir
    try:
        start_up(stack, port, data_dir, golden_model_dir)
        yield stack
    finally:
        stack.stop()


def run_actq(*args: str, env: dict | None = None, input: bytes | None = None, timeout=300):
    """Run the ``actq`` command in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
    )
