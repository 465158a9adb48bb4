"""The embedded stack behind ``actq up``: SQLite, a serverless broker, the API and one worker.

Everything lives in the data dir: ``actq.db`` (SQLite, WAL mode) and ``broker/`` (kombu's
filesystem transport, chosen over the SQLAlchemy transport because it needs no extra tables and
moves a message atomically from the queue folder; unacknowledged messages go back to the queue
when the worker shuts down cleanly). A message held by a worker that was killed is lost with
this transport, so at start ``actq up`` puts back every job that is still pending: ``started``
jobs (their worker is gone, since this is the only one) return to ``queued``, and every ``queued``
job is published again; the claim step makes a duplicate harmless.

The API runs in this process (a threaded WSGI server), the worker as a child process
(``actq worker`` with the solo pool) with the same settings in its environment.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

import migrations
from models.settings import Settings
from models.store.db import make_engine, make_sessionmaker
from models.store.jobs import pending_jobs, requeue_job
from models.store.lifecycle import JobStatus

log = logging.getLogger(__name__)


def embedded_settings(
    data_dir: str | Path | None,
    model: str | None,
    mlp_autoencoder: str | None = None,
    attention_autoencoder: str | None = None,
) -> Settings:
    """Settings of the embedded mode: URLs inside the data dir, whatever the environment says."""
    base = Settings()
    data = Path(data_dir).expanduser().resolve() if data_dir else base.data_path().resolve()
    return base.model_copy(
        update={
            "data_dir": data,
            "database_url": f"sqlite:///{data / 'actq.db'}",
            "broker_url": f"filesystem://{data / 'broker'}",
            "model": model or base.model,
            "models": None,
            "mlp_autoencoder": mlp_autoencoder or base.mlp_autoencoder,
            "attention_autoencoder": attention_autoencoder or base.attention_autoencoder,
        }
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see ``settings``."""
    env = dict(os.environ)
    env.update(
        ACTQ_DATA_DIR=str(settings.data_path()),
        ACTQ_DATABASE_URL=settings.database(),
        ACTQ_BROKER_URL=settings.broker(),
        ACTQ_MODEL=settings.model,
    )
    env.pop("ACTQ_MODELS", None)
    for name, value in (
        ("ACTQ_MLP_AUTOENCODER", settings.mlp_autoencoder),
        ("ACTQ_ATTENTION_AUTOENCODER", settings.attention_autoencoder),
    ):
        if value:
            env[name] = str(value)
        else:
            env.pop(name, None)
    if settings.device:
        env["ACTQ_DEVICE"] = settings.device
    return env


def recover_pending(settings: Settings, publish) -> int:
    """Requeue jobs left started by a dead worker and publish every queued job again."""
    engine = make_engine(settings.database())
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            jobs = pending_jobs(session)
            for job in jobs:
                if job.status == JobStatus.STARTED:
                    requeue_job(session, job.id)
        for job in jobs:
            publish(job.id, job.model)
        return len(jobs)
    finally:
        engine.dispose()


def unservable(settings: Settings) -> str | None:
    """Why the model cannot be served (no such directory, weights not in the local cache, ...),
    said before anything starts, instead of a worker that exits with a bare code."""
    from models.errors import ActqError
    from models.model_meta import TINY_GPT2_NAME, resolve_model, weight_files

    try:
        meta = resolve_model(settings.model, settings.data_path())
    except ActqError as error:
        return error.message
    if meta.name != TINY_GPT2_NAME and meta.path is not None and not weight_files(meta.path):
        return (
            f"{meta.path} has a config.json but no weights (model.safetensors or "
            "pytorch_model.bin); download them on a machine with network access, e.g. "
            f"`huggingface-cli download {settings.model}`, and copy the Hugging Face cache here"
        )
    return None


def start_worker(settings: Settings, verbose: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "api.cli", "worker", "--pool", "solo"]
    if not verbose:  # its banner and INFO lines bury what ``actq up`` says
        command += ["--quiet", "--loglevel", "WARNING"]
    return subprocess.Popen(command, env=settings_env(settings))


def _stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, but its ``Server`` header names no server or Python version (what
    a scanner would match against known holes); gunicorn's says ``gunicorn`` only."""

    def version_string(self) -> str:
        return "actq"


def serve(settings: Settings, host: str, port: int, verbose: bool = False) -> int:
    """Run the embedded stack in the foreground until interrupted; returns an exit code.

    Quiet unless ``verbose``: no line per request, no worker banner; warnings and errors show."""
    from api.app import create_app
    from api.auth import safe_bind
    from api.queue import make_producer
    from models.store.lifecycle import TASK_NAME, queue_name

    data = settings.data_path()
    data.mkdir(parents=True, exist_ok=True)
    problem = unservable(settings)
    if problem:
        print(f"actq: cannot serve {settings.model}: {problem}", file=sys.stderr, flush=True)
        return 2
    migrations.upgrade(settings.database())
    host, note = safe_bind(settings, host)
    print(note, file=sys.stderr, flush=True)
    producer = make_producer(settings)

    def publish(job_id: str, model: str) -> None:
        producer.send_task(TASK_NAME, args=[job_id], queue=queue_name(model))

    recovered = recover_pending(settings, publish)
    if recovered:
        print(f"actq: {recovered} pending job(s) put back in the queue", file=sys.stderr)
    app = create_app(settings)
    if not verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)
    worker = start_worker(settings, verbose)
    stopping = threading.Event()

    def shutdown(*_args) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    def watch_worker() -> None:
        worker.wait()
        if not stopping.is_set():
            print(f"actq: the worker exited with code {worker.returncode}", file=sys.stderr)
            shutdown()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    threading.Thread(target=watch_worker, daemon=True).start()
    url = f"http://{host}:{server.server_port}"
    print(f"actq: serving {settings.model} at {url} (data in {data}); Ctrl-C stops", flush=True)
    if settings.model == "tiny-gpt2":
        print("actq: tiny-gpt2 has random weights: its top tokens mean nothing", flush=True)
    try:
        server.serve_forever()
    finally:
        stopping.set()
        _stop(worker)
        server.server_close()
    return 0 if worker.returncode in (0, -signal.SIGTERM) else 1
