"""The reaper: a periodic sweep that no job survives being forgotten by.

Every worker runs one in a thread of its main process (``worker.celery_app``) and ``actq reap``
runs one sweep (or ``--loop`` forever). A sweep

1. checks that the broker still has its messages: a marker key is kept in Redis, and when it is
   missing (Redis restarted without persistence, or was flushed) every queued job is marked
   unpublished so that it gets a new message;
2. hands jobs whose worker stopped sending heartbeats to ``models.store.recovery.reap``: back to
   ``queued``, or ``failed`` with ``worker_lost`` after ``ACTQ_MAX_ATTEMPTS`` claims, or
   ``canceled`` if a cancel was asked for;
3. publishes every queued job that has no message (the outbox): requeued jobs, jobs accepted
   while the broker was down, jobs whose API process died between commit and publish;
4. does 1-3 for records jobs and sweeps too (``models.store.side_recovery`` on their table),
   when given their publisher; a sweep failed so fails its jobs still queued (they had only its
   message).

Sweeps by several workers at once are safe: every change is a conditional UPDATE and a
duplicate message is a no-op for the claim step.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings
from models.store import recovery, side_recovery, sweeps, tables
from models.store.tables import utcnow

log = logging.getLogger(__name__)

PUBLISH_GRACE_SECONDS = 2.0  # the API marks its own jobs published within this
MARKER_KEY = "actq:broker-marker"

Publish = Callable[[str, str], None]


@dataclass
class Sweep:
    """What one sweep did."""

    broker_lost_messages: bool = False
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    records_requeued: list[str] = field(default_factory=list)
    records_failed: list[str] = field(default_factory=list)
    records_published: list[str] = field(default_factory=list)
    sweeps_requeued: list[str] = field(default_factory=list)
    sweeps_failed: list[str] = field(default_factory=list)
    sweeps_published: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"requeued {len(self.requeued)}, failed {len(self.failed)}, canceled "
            f"{len(self.canceled)}, published {len(self.published)}"
            + "".join(self._side(label, prefix) for label, prefix in SIDE_LABELS)
            + (" (the broker had lost its messages)" if self.broker_lost_messages else "")
        )

    def _side(self, label: str, prefix: str) -> str:
        counts = [len(getattr(self, f"{prefix}_{what}")) for what in SIDE_OUTCOMES]
        return (
            "; {}: requeued {}, failed {}, published {}".format(label, *counts)
            if any(counts)
            else ""
        )


SIDE_LABELS = (("record sets", "records"), ("sweeps", "sweeps"))
SIDE_OUTCOMES = ("requeued", "failed", "published")


class BrokerMarker:
    """Tells whether a Redis broker lost its data since the last look (a key that vanishes)."""

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def lost(self) -> bool:
        """True (once) when the marker is gone; sets it again."""
        return bool(self.client.set(MARKER_KEY, utcnow().isoformat(), nx=True))

    def close(self) -> None:
        self.client.close()


def broker_marker(settings: Settings) -> BrokerMarker | None:
    url = settings.broker()
    return BrokerMarker(url) if url.startswith(("redis://", "rediss://")) else None


class Reaper:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        publish: Publish,
        marker: BrokerMarker | None = None,
        publish_records: Publish | None = None,
        publish_sweeps: Publish | None = None,
    ):
        self.settings = settings
        self.sessions = sessions
        self.publish = publish
        self.marker = marker
        self.publish_records = publish_records  # (set id, model): a records job's message
        self.publish_sweeps = publish_sweeps  # (sweep id, model): a sweep's message

    def _sides(self) -> list[tuple[str, type, Publish]]:
        """(Sweep field prefix, table, publisher) of each side table with a publisher."""
        sides = [
            ("records", tables.RecordSet, self.publish_records),
            ("sweeps", tables.Sweep, self.publish_sweeps),
        ]
        return [(prefix, table, send) for prefix, table, send in sides if send is not None]

    def sweep(self, now: dt.datetime | None = None) -> Sweep:
        done = Sweep()
        if self._broker_lost_messages():
            with self.sessions.begin() as session:
                forgotten = recovery.forget_publications(session)
                for _, table, _ in self._sides():
                    forgotten += side_recovery.forget_publications(session, table)
            done.broker_lost_messages = True
            log.warning("The broker lost its messages: %d queued job(s) to publish", forgotten)
        with self.sessions.begin() as session:
            reaped = recovery.reap(
                session, self.settings.lease_seconds, self.settings.max_attempts, now=now
            )
        done.requeued, done.failed, done.canceled = reaped.requeued, reaped.failed, reaped.canceled
        for job_id in reaped.requeued:
            log.warning("Job %s: its worker stopped sending heartbeats; requeued", job_id)
        for job_id in reaped.failed:
            log.error("Job %s: failed, its worker was lost on every attempt", job_id)
        done.published = self.publish_unpublished(now)
        for prefix, table, send in self._sides():
            self._sweep_side(done, prefix, table, send, now)
        return done

    def _sweep_side(
        self, done: Sweep, prefix: str, table: type, send: Publish, now: dt.datetime | None
    ) -> None:
        """Steps 2 and 3 for one side table (record sets or sweeps)."""
        name = table.__name__
        with self.sessions.begin() as session:
            reaped = side_recovery.reap(
                session, table, self.settings.lease_seconds, self.settings.max_attempts, now=now
            )
        setattr(done, f"{prefix}_requeued", reaped.requeued)
        setattr(done, f"{prefix}_failed", reaped.failed)
        for row_id in reaped.requeued:
            log.warning("%s %s: its worker stopped sending heartbeats; requeued", name, row_id)
        for row_id in reaped.failed:
            log.error("%s %s: failed, its worker was lost on every attempt", name, row_id)
        if table is tables.Sweep and reaped.failed:
            self._fail_sweeps_jobs(reaped.failed, now)
        older_than = (now or utcnow()) - dt.timedelta(seconds=PUBLISH_GRACE_SECONDS)
        with self.sessions.begin() as session:
            rows = side_recovery.unpublished(session, table, older_than)
        published = getattr(done, f"{prefix}_published")
        for row_id, model in rows:
            try:
                send(row_id, model)
            except Exception as error:
                log.warning("%s %s: the broker is unavailable (%s)", name, row_id, error)
                break
            with self.sessions.begin() as session:
                side_recovery.mark_published(session, table, row_id)
            published.append(row_id)

    def _fail_sweeps_jobs(self, sweep_ids: list[str], now: dt.datetime | None) -> None:
        """A failed sweep's queued jobs had only its message: they fail with it."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            for sweep_id in sweep_ids:
                error = session.get(tables.Sweep, sweep_id).error
                sweeps.fail_queued_jobs(session, sweep_id, error, now)

    def _broker_lost_messages(self) -> bool:
        if self.marker is None:
            return False
        try:
            return self.marker.lost()
        except Exception as error:  # the broker is down: reap anyway, publish later
            log.warning("Cannot reach the broker to check its marker: %s", error)
            return False

    def publish_unpublished(self, now: dt.datetime | None = None) -> list[str]:
        """Publish queued jobs without a message; stops at the first broker error."""
        older_than = (now or utcnow()) - dt.timedelta(seconds=PUBLISH_GRACE_SECONDS)
        with self.sessions.begin() as session:
            jobs = recovery.unpublished_jobs(session, older_than)
        published = []
        for job_id, model in jobs:
            try:
                self.publish(job_id, model)
            except Exception as error:
                log.warning("Job %s: the broker is unavailable (%s); will retry", job_id, error)
                break
            with self.sessions.begin() as session:
                recovery.mark_published(session, job_id)
            published.append(job_id)
        if published:
            log.info("Published %d queued job(s) that had no message", len(published))
        return published

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``ACTQ_REAP_SECONDS`` until ``stop`` is set; errors are logged, not fatal."""
        while not stop.wait(self.settings.reap_seconds):
            try:
                self.sweep()
            except Exception as error:  # the database or broker is down: try again next time
                log.warning("Reaper sweep failed: %s", error)


def start_thread(reaper: Reaper) -> threading.Event:
    """Run ``reaper`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=reaper.run, args=(stop,), name="actq-reaper", daemon=True).start()
    return stop
