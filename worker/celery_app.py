"""The Celery app of a worker: one model per worker, one queue per model, late acks.

``create_celery(settings)`` configures the app from ``models.settings.celery_config`` (the same
broker settings the API publishes with) and registers ``actq.run_job``. The worker listens on
``actq.<model name>`` only, takes one message at a time (prefetch 1) and acknowledges it after the
job's outcome is stored, so a worker that dies mid-job leaves the message to the broker: Redis
delivers it again after ``visibility_timeout``, and the claim step decides whether it runs again
(see ``worker.tasks``). Results are ignored; the jobs table is the source of truth.

The main process of every worker also runs the reaper (``worker.reaper``) in a thread, and fails
a job with ``timeout`` when Celery kills the pool process that ran it at the hard time limit
(``ACTQ_JOB_TIME_LIMIT``; the prefork pool enforces it, the solo pool of the embedded mode does
not, and relies on the soft limit).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_ready

from models.settings import Settings, celery_config, ensure_broker_folders
from models.store.lifecycle import queue_name

log = logging.getLogger(__name__)


def create_celery(settings: Settings, model_name: str) -> Celery:
    """A Celery app for a worker that serves ``model_name`` (tasks registered, queue routed)."""
    from worker import records, sweeps, tasks

    ensure_broker_folders(settings.broker())
    app = Celery("actq-worker", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.update(
        task_default_queue=queue_name(model_name),
        task_create_missing_queues=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_time_limit=settings.job_time_limit,
    )
    tasks.configure(settings)
    tasks.register(app)
    records.register(app)
    sweeps.register(app)
    if settings.worker_alive_file:
        _touch_when_ready(Path(settings.worker_alive_file))
    _reap_when_ready(app, settings)
    _fail_jobs_at_hard_time_limit(settings)
    return app


def _reap_when_ready(app: Celery, settings: Settings) -> None:
    """Once the worker consumes, run the reaper in a thread of this (main) process."""
    from models.store.lifecycle import TASK_NAME
    from models.store.node_records import RECORDS_TASK
    from models.store.sweeps import SWEEP_TASK
    from worker import reaper, tasks

    def publish(job_id: str, model: str) -> None:
        app.send_task(TASK_NAME, args=[job_id], queue=queue_name(model))

    def publish_records(set_id: str, model: str) -> None:
        app.send_task(RECORDS_TASK, args=[set_id], queue=queue_name(model))

    def publish_sweeps(sweep_id: str, model: str) -> None:
        app.send_task(SWEEP_TASK, args=[sweep_id], queue=queue_name(model))

    def on_ready(**_kwargs) -> None:
        marker = reaper.broker_marker(settings)
        sessions = tasks.process_sessions()
        reaper.start_thread(
            reaper.Reaper(settings, sessions, publish, marker, publish_records, publish_sweeps)
        )
        log.info(
            "Reaper: sweeping every %ss (lease %ss)", settings.reap_seconds, settings.lease_seconds
        )

    worker_ready.connect(on_ready, weak=False)


def _fail_jobs_at_hard_time_limit(settings: Settings) -> None:
    """When Celery kills a pool process at the hard limit, fail its job with ``timeout``."""
    from worker import tasks

    def on_failure(sender=None, args=None, exception=None, **_kwargs) -> None:
        if not isinstance(exception, TimeLimitExceeded) or not args:
            return
        node = _node_name.get("name")
        if node:
            tasks.fail_on_hard_timeout(args[0], node, settings.job_time_limit)

    task_failure.connect(on_failure, weak=False)


_node_name: dict[str, str] = {}


@worker_ready.connect
def _remember_node_name(sender=None, **_kwargs) -> None:
    if sender is not None and getattr(sender, "hostname", None):
        _node_name["name"] = sender.hostname


def _touch_when_ready(path: Path, every: float = 5.0) -> None:
    """Once the worker consumes, touch ``path`` every few seconds (a container health check)."""

    def touch_forever() -> None:
        while True:
            path.touch()
            time.sleep(every)

    def on_ready(**_kwargs) -> None:
        threading.Thread(target=touch_forever, name="alive-file", daemon=True).start()

    worker_ready.connect(on_ready, weak=False)


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    """A forked pool process must not share its parent's database connections."""
    from worker import tasks

    tasks.dispose_connections()
