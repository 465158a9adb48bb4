"""The ``actq`` command: the one composition root of the project.

Commands that talk to a running service (``submit``, ``status``, ``result``, ``wait``,
``history``) use ``api.client``; ``api``, ``worker``, ``reap`` and ``db upgrade`` start the
production pieces (``keys``, in ``api.cli_keys``, manages API keys); ``up`` and ``demo`` the
embedded stack; ``run`` runs the engine in-process. Only ``run``, ``worker`` and ``reap`` reach
into ``worker/`` (``reap`` without torch), and only inside the command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from models.errors import ActqError, RequestValidationError
from models.jobs import ENDPOINTS
from models.settings import Settings

EXIT_REQUEST_ERROR = 2
# Modules that add commands: each has ``add_commands(subparsers)``; loaded when present.
EXTRA_COMMAND_MODULES = ["api.cli_compare", "api.cli_keys"]


def _read_request(path: str | None) -> bytes | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- in-process engine --------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from models.wirejson import dumps

    raw = _read_request(args.request)
    try:
        request = json.loads(raw) if raw and raw.strip() else None
    except json.JSONDecodeError as error:
        print(dumps(RequestValidationError(f"malformed JSON: {error}").to_dict()))
        return EXIT_REQUEST_ERROR
    settings = Settings()
    from worker.engine import load_model, run

    try:
        model = load_model(args.model or settings.model, device=args.device or settings.device)
        response = run(args.endpoint, request, model)
    except ActqError as error:
        print(dumps(error.to_dict()))
        return EXIT_REQUEST_ERROR
    sys.stdout.write(dumps(response) + "\n")
    return 0


# --- production pieces --------------------------------------------------------------------


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
        "threads": args.threads,
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
    from models.jobs import queue_name
    from models.model_meta import resolve_model
    from worker.celery_app import create_celery

    settings = Settings()
    meta = resolve_model(settings.model, settings.data_path())
    app = create_celery(settings, meta.name)
    queue = queue_name(meta.name)
    print(f"actq: worker for {meta.name} on queue {queue}", file=sys.stderr, flush=True)
    argv = [
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
    app.worker_main(argv)
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    """One sweep of the reaper (or ``--loop``): requeue or fail abandoned jobs, publish the rest."""
    import threading

    from api.queue import make_producer
    from models.db import make_engine, make_sessionmaker
    from models.jobs import TASK_NAME, queue_name
    from worker.reaper import Reaper, broker_marker

    settings = Settings()
    producer = make_producer(settings)

    def publish(job_id: str, model: str) -> None:
        producer.send_task(TASK_NAME, args=[job_id], queue=queue_name(model))

    engine = make_engine(settings.database())
    reaper = Reaper(settings, make_sessionmaker(engine), publish, broker_marker(settings))
    try:
        if args.loop:
            reaper.run(threading.Event())
            return 0
        print(f"actq: reaper: {reaper.sweep().summary()}", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


# --- the embedded stack -------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from api.embedded import embedded_settings, serve

    settings = embedded_settings(args.data_dir, args.model)
    return serve(settings, args.host, args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from api.demo import demo

    return demo(args.data_dir, args.model, args.port)


# --- talking to a running service ---------------------------------------------------------


def _client(args: argparse.Namespace):
    from api.client import Client

    return Client(args.url or Settings().api_url)


def _progress(job: dict, elapsed: float) -> None:
    line = (
        f"actq: job {job['id']} {job['status']} after {elapsed:.1f}s (attempts {job['attempts']})"
    )
    end = "\r" if sys.stderr.isatty() and job["status"] in ("queued", "started") else "\n"
    print(line.ljust(72), end=end, file=sys.stderr, flush=True)


def _final_code(job: dict) -> int:
    if job["status"] == "finished":
        return 0
    error = job.get("error") or {}
    print(f"actq: job {job['id']} {job['status']}: {error.get('message')}", file=sys.stderr)
    return 1


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    body = _read_request(args.request) if args.endpoint != "model_info" else None
    job = client.submit(args.endpoint, body, model=args.model, label=args.label, tags=args.tag)
    print(f"{job['id']} {client.url}{job['url']}")
    if not args.wait:
        return 0
    return _final_code(client.wait(job["id"], on_progress=_progress))


def cmd_status(args: argparse.Namespace) -> int:
    _print_json(_client(args).status(args.job))
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    status, body = _client(args).result(args.job, wait=args.wait)
    sys.stdout.write(body.decode("utf-8") + "\n")
    if status == 202:
        print("actq: the job is still pending", file=sys.stderr)
        return 3
    return 0 if status == 200 else 1


def cmd_wait(args: argparse.Namespace) -> int:
    job = _client(args).wait(args.job, timeout=args.timeout, on_progress=_progress)
    _print_json(job)
    return _final_code(job)


def cmd_history(args: argparse.Namespace) -> int:
    page = _client(args).history(
        model=args.model,
        status=args.status,
        endpoint=args.endpoint,
        prompt=args.prompt,
        promptContains=args.contains,
        tag=args.tag,
        label=args.label,
        since=args.since,
        until=args.until,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        _print_json(page)
        return 0
    print(f"{'JOB':26}  {'CREATED':19}  {'STATUS':8}  {'ENDPOINT':30}  {'MODEL':16}  PROMPT")
    for job in page["jobs"]:
        prompt = job["runs"][0]["prompt"] if job["runs"] else ""
        extra = f" (+{len(job['runs']) - 1})" if len(job["runs"]) > 1 else ""
        created = job["createdAt"][:19].replace("T", " ")
        print(
            f"{job['id']:26}  {created:19}  {job['status']:8}  {job['endpoint']:30}  "
            f"{job['model'][:16]:16}  {prompt[:40]!r}{extra}"
        )
    if page.get("nextCursor"):
        print(f"more: --cursor {page['nextCursor']}", file=sys.stderr)
    return 0


# --- parser -------------------------------------------------------------------------------


def _add_service_commands(sub) -> None:
    p = sub.add_parser("submit", help="submit a request to a running service")
    p.add_argument("endpoint", choices=ENDPOINTS)
    p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
    p.add_argument("--model")
    p.add_argument("--label")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    p.set_defaults(func=cmd_submit)
    for name, func, help_ in (
        ("status", cmd_status, "a job's status"),
        ("result", cmd_result, "a job's TDB response"),
        ("wait", cmd_wait, "block until a job is done"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("job")
        if name == "result":
            p.add_argument("--wait", type=float, help="seconds to wait for the result")
        if name == "wait":
            p.add_argument("--timeout", type=float)
        p.set_defaults(func=func)
    p = sub.add_parser("history", help="list past jobs, newest first")
    for flag in ("--model", "--status", "--endpoint", "--prompt", "--label", "--since", "--until"):
        p.add_argument(flag)
    p.add_argument("--contains", help="substring of the prompt")
    p.add_argument("--tag", action="append")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)


def _add_process_commands(sub) -> None:
    p = sub.add_parser("run", help="run one request through the engine in-process")
    p.add_argument("endpoint", choices=ENDPOINTS)
    p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
    p.add_argument("--model", help="model name or directory (default: ACTQ_MODEL)")
    p.add_argument("--device", help="cpu or cuda (default: ACTQ_DEVICE or the best available)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("up", help="the embedded stack: SQLite, API and one worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir")
    p.add_argument("--model")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("demo", help="start the embedded stack, run a clean and an ablated twin")
    p.add_argument("--data-dir")
    p.add_argument("--model")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("api", help="the API under gunicorn (ACTQ_DATABASE_URL, ACTQ_BROKER_URL)")
    p.add_argument("--bind", default="127.0.0.1:8000")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--access-log", action="store_true")
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="a Celery worker for ACTQ_MODEL's queue")
    p.add_argument("--pool", choices=["prefork", "solo", "threads"])
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("reap", help="requeue jobs of dead workers, publish jobs with no message")
    p.add_argument("--loop", action="store_true", help="sweep every ACTQ_REAP_SECONDS, forever")
    p.set_defaults(func=cmd_reap)
    p = sub.add_parser("db", help="database schema")
    db = p.add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply the migrations (ACTQ_DATABASE_URL)")
    up.add_argument("--url", help="database URL (default: ACTQ_DATABASE_URL)")
    up.set_defaults(func=cmd_db_upgrade)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actq",
        description="actq: an activation server for transformer interpretability that runs "
        "Transformer Debugger (TDB) requests as jobs. `actq up` starts a self-contained service; "
        "`actq run ENDPOINT REQUEST.json` answers one request in-process.",
    )
    parser.add_argument(
        "--url", help="service URL (default: ACTQ_API_URL or http://127.0.0.1:8000)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_process_commands(sub)
    _add_service_commands(sub)
    for name in EXTRA_COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from api.client import ClientError

    try:
        return args.func(args)
    except ClientError as error:
        print(f"actq: {error}", file=sys.stderr)
        return 1
    except ActqError as error:
        print(f"actq: {error}", file=sys.stderr)
        return EXIT_REQUEST_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
