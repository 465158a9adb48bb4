"""Publishing jobs to the workers: a Celery producer that knows task and queue names only.

The API sends ``actq.run_job`` by name with the job id, after the job row is committed; it never
imports the worker code. Celery's producer side needs only the broker settings.
"""

from __future__ import annotations

import logging

from celery import Celery
from flask import Flask, current_app

from models.settings import celery_config, ensure_broker_folders
from models.store.lifecycle import TASK_NAME, queue_name
from models.store.side_recovery import mark_published

log = logging.getLogger(__name__)


def make_producer(settings) -> Celery:
    ensure_broker_folders(settings.broker())
    producer = Celery("actq-api", set_as_current=False)
    producer.conf.update(celery_config(settings))
    return producer


def init_app(app: Flask) -> None:
    app.extensions["actq.celery"] = make_producer(app.config["ACTQ_SETTINGS"])


def publish_job(job_id: str, model_name: str) -> None:
    """Send the job's message to its model's queue (raises on broker failure)."""
    producer: Celery = current_app.extensions["actq.celery"]
    producer.send_task(TASK_NAME, args=[job_id], queue=queue_name(model_name))
    log.info("Job %s: published to %s", job_id, queue_name(model_name))


def publish_row(session, table, row_id: str, task: str, model: str, what: str) -> None:
    """Send a committed record set's or sweep's message (``task``) and mark the row published
    (the outbox, ``models.store.side_recovery``); on a broker error it stays unpublished and a
    worker's reaper publishes it. ``what`` names the row in the log ("Sweep", "Record set")."""
    producer: Celery = current_app.extensions["actq.celery"]
    try:
        producer.send_task(task, args=[row_id], queue=queue_name(model))
    except Exception as error:
        log.warning(
            "%s %s: broker unavailable (%s); the reaper will publish it", what, row_id, error
        )
        return
    try:
        mark_published(session, table, row_id)
        session.commit()
    except Exception as error:  # a duplicate message later is harmless
        session.rollback()
        log.warning("%s %s: published but not marked (%s)", what, row_id, error)
    log.info("%s %s: published", what, row_id)
