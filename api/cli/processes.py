"""The commands that start actq's processes: ``api`` (gunicorn), ``worker`` (Celery), ``reap``,
``db upgrade``, and the embedded stack (``up``, ``demo``). Only ``worker`` and ``reap`` reach into
``worker/`` (``reap`` without torch), and only inside the command."""

from __future__ import annotations

import argparse
import os
import sys

from models.settings import Settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import migrations

    url = args.url or Settings().database()
    migrations.upgrade(url)
    print(f"actq: database schema is up to date ({_redacted(url)})", file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "?"


def _checked_bind(settings: Settings, bind: str) -> str | None:
    """``bind``, or its loopback twin when no API key is configured (saying so); None: no DB."""
    from api.auth import safe_bind

    if bind.startswith("unix:"):
        return bind
    host, _, port = bind.rpartition(":")
    try:
        host, note = safe_bind(settings, host)
    except Exception as error:
        print(
            f"actq: cannot reach the database to look for API keys ({type(error).__name__}: "
            f"{error}); run `actq db upgrade` first, and check ACTQ_DATABASE_URL",
            file=sys.stderr,
        )
        return None
    print(note, file=sys.stderr, flush=True)
    return f"{host}:{port}"


def cmd_api(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    settings = Settings()
    bind = _checked_bind(settings, args.bind)
    if bind is None:
        return 1
    options = {
        "bind": bind,
        "workers": args.workers,
        "worker_class": "gthread",
        "threads": args.threads + settings.max_waiters,  # waiters never take the last threads
        "timeout": int(max(settings.tdb_wait_seconds, settings.max_wait_seconds) + 30),
        "accesslog": "-" if args.access_log else None,
        "errorlog": "-",
    }

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self):
            from api.app import create_app

            return create_app()

    Gunicorn().run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from models.model_meta import resolve_model
    from models.store.lifecycle import queue_name
    from worker.celery_app import create_celery

    for variable, value in (
        ("ACTQ_MLP_AUTOENCODER", args.mlp_autoencoder),
        ("ACTQ_ATTENTION_AUTOENCODER", args.attention_autoencoder),
    ):
        if value:  # the task process reads its settings from the environment
            os.environ[variable] = value
    settings = Settings()
    meta = resolve_model(settings.model, settings.data_path())
    app = create_celery(settings, meta.name)
    queue = queue_name(meta.name)
    print(f"actq: worker for {meta.name} on queue {queue}", file=sys.stderr, flush=True)
    argv = [
        *(["--quiet"] if args.quiet else []),  # no banner
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(args.concurrency),
        "--pool",
        args.pool or settings.worker_pool,
        "--hostname",
        f"actq-{meta.name}-{os.getpid()}@%h",
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if args.quiet:  # the embedded mode's worker: running as root there is the user's choice
        import warnings

        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
    app.worker_main(argv)
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    """One sweep of the reaper (or ``--loop``): requeue or fail abandoned jobs, publish the rest."""
    import threading

    from api.queue import make_producer
    from models.store.db import make_engine, make_sessionmaker
    from models.store.lifecycle import TASK_NAME, queue_name
    from models.store.node_records import RECORDS_TASK
    from models.store.sweeps import SWEEP_TASK
    from worker.reaper import Reaper, broker_marker

    settings = Settings()
    producer = make_producer(settings)

    def publish(job_id: str, model: str) -> None:
        producer.send_task(TASK_NAME, args=[job_id], queue=queue_name(model))

    def publish_records(set_id: str, model: str) -> None:
        producer.send_task(RECORDS_TASK, args=[set_id], queue=queue_name(model))

    def publish_sweeps(sweep_id: str, model: str) -> None:
        producer.send_task(SWEEP_TASK, args=[sweep_id], queue=queue_name(model))

    engine = make_engine(settings.database())
    marker = broker_marker(settings)
    reaper = Reaper(
        settings, make_sessionmaker(engine), publish, marker, publish_records, publish_sweeps
    )
    try:
        if args.loop:
            reaper.run(threading.Event())
            return 0
        print(f"actq: reaper: {reaper.sweep().summary()}", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


def cmd_up(args: argparse.Namespace) -> int:
    from api.cli.embedded import embedded_settings, serve

    settings = embedded_settings(
        args.data_dir, args.model, args.mlp_autoencoder, args.attention_autoencoder
    )
    return serve(settings, args.host, args.port, verbose=args.verbose)


def cmd_demo(args: argparse.Namespace) -> int:
    from api.cli.demo import demo

    return demo(args.data_dir, args.model, args.port, verbose=args.verbose)


def add_autoencoder_options(p) -> None:
    p.add_argument(
        "--mlp-autoencoder",
        help="MLP autoencoder to serve: a folder in TDB's or SAELens's format, or NAME=DIR "
        "(default: ACTQ_MLP_AUTOENCODER)",
    )
    p.add_argument(
        "--attention-autoencoder",
        help="attention autoencoder to serve, as --mlp-autoencoder (default: "
        "ACTQ_ATTENTION_AUTOENCODER)",
    )


def add_commands(sub) -> None:
    p = sub.add_parser("up", help="the embedded stack: SQLite, API and one worker")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--data-dir", help="database, broker and tiny-gpt2 (default: ACTQ_DATA_DIR)")
    p.add_argument("--model", help="the model to serve (default: ACTQ_MODEL or tiny-gpt2)")
    p.add_argument(
        "--verbose", action="store_true", help="show every request and the worker's own log"
    )
    add_autoencoder_options(p)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("demo", help="start the embedded stack, run a clean and an ablated twin")
    p.add_argument("--data-dir", help="where the demo's jobs are kept (default: ACTQ_DATA_DIR)")
    p.add_argument("--model", help="the model to serve (default: ACTQ_MODEL or tiny-gpt2)")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--verbose", action="store_true", help="show the embedded stack's log")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("api", help="the API under gunicorn (ACTQ_DATABASE_URL, ACTQ_BROKER_URL)")
    p.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default 127.0.0.1:8000)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn processes (default 2)")
    p.add_argument("--threads", type=int, default=8, help="threads per process (default 8)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="a Celery worker for ACTQ_MODEL's queue")
    p.add_argument(
        "--pool",
        choices=["prefork", "solo", "threads"],
        help="Celery pool (default ACTQ_WORKER_POOL)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (default 1)")
    p.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    p.add_argument("--quiet", action="store_true", help="no banner, no root SecurityWarning")
    add_autoencoder_options(p)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("reap", help="requeue jobs of dead workers, publish jobs with no message")
    p.add_argument("--loop", action="store_true", help="sweep every ACTQ_REAP_SECONDS, forever")
    p.set_defaults(func=cmd_reap)
    p = sub.add_parser("db", help="database schema")
    db = p.add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply the migrations (ACTQ_DATABASE_URL)")
    up.add_argument("--url", help="database URL (default: ACTQ_DATABASE_URL)")
    up.set_defaults(func=cmd_db_upgrade)
