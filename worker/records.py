"""``actq.build_records(set_id)``: a records job, with the reliability rules of ``worker.tasks``.

* **Claim** (``models.store.node_records.claim_record_set``): ``queued -> started`` with attempts
  + 1, or a ``started`` set whose heartbeat is older than the lease (its worker died and the
  broker delivered the message again); a duplicate message claims nothing.
* **Heartbeat and progress**: after each batch the set's heartbeat and ``done_sequences`` are
  written; an attempt that finds it no longer holds the set stops.
* **Store**: the records and ``finished`` in one transaction, only by the attempt that holds it.
* **Late ack and the reaper**: the message is acknowledged after the outcome is stored, so a
  worker killed mid-job leaves it to be delivered again; and a set whose heartbeat is older than
  the lease is sent back to ``queued`` and published again by any worker's reaper
  (``models.store.record_recovery``), or failed with ``worker_lost`` after its last attempt.
* ``ACTQ_DEBUG_DELAYS=1`` and a set named ``debug-delay=S``: S seconds before each batch (a slow
  job to kill in ``tests/test_faults.py``).

The corpus's documents are its non-empty lines (the ``text`` of each line of a JSON Lines file);
each is cut into sequences of ``seq_len`` tokens. The model runs over them in batches and the
``RecordBuilder`` (``worker.engine.records``) keeps each node's top sequences as it goes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import zlib
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from models.store import node_records as store
from models.store.tables import NodeRecord, RecordSet
from worker.execution import error_record

log = logging.getLogger(__name__)

BATCH_SEQUENCES = 16


def documents(text: str) -> list[str]:
    docs = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line[0] in '{"':
            try:
                value = json.loads(line)
                line = value.get("text", "") if isinstance(value, dict) else str(value)
            except ValueError:
                pass
        if line:
            docs.append(line)
    return docs


def sequences_of(tokenizer, text: str, seq_len: int) -> list[list[int]]:
    out = []
    for tokens in tokenizer.encode_batch(documents(text)):
        out.extend(tokens[i : i + seq_len] for i in range(0, len(tokens), seq_len))
    return [s for s in out if s]


def execute_records(
    sessions: sessionmaker[Session],
    set_id: str,
    *,
    model: Callable[[], object],
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    batch_size: int = BATCH_SEQUENCES,
    debug_delays: bool = False,
) -> str | None:
    """Build one record set end to end; its final status, or None if not claimable."""
    with sessions.begin() as session:
        attempt = store.claim_record_set(session, set_id, worker, lease_seconds, max_attempts)
    if attempt is None:
        log.info("Record set %s: not claimable (duplicate message or already done)", set_id)
        return None
    try:
        return _build(sessions, set_id, attempt, model(), batch_size, debug_delays)
    except Exception as error:
        log.exception("Record set %s failed", set_id)
        with sessions.begin() as session:
            store.fail_record_set(session, set_id, attempt, error_record(error))
        return "failed"


def _build(
    sessions, set_id: str, attempt: int, loaded, batch_size: int, debug_delays: bool = False
) -> str | None:
    from worker.engine.records import RecordBuilder, random_sequences

    with sessions() as session:
        job = session.get(RecordSet, set_id)
        corpus = zlib.decompress(job.corpus).decode()
        kinds, top_k, random_k, seq_len = job.kinds, job.top_k, job.random_k, job.seq_len
        delay = re.fullmatch(r"debug-delay=(\d+(?:\.\d+)?)", job.name or "")
    pause = float(delay.group(1)) if delay and debug_delays else 0.0
    sequences = sequences_of(loaded.tokenizer, corpus, seq_len)
    if not sequences:
        raise ValueError("the corpus has no tokens")
    with sessions.begin() as session:
        store.set_size(session, set_id, attempt, len(sequences))
    builder = RecordBuilder(loaded, kinds, top_k, seq_len)
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        time.sleep(pause)
        builder.add_batch(batch, list(range(start, start + len(batch))))
        with sessions.begin() as session:
            if not store.beat(session, set_id, attempt, start + len(batch)):
                log.warning("Record set %s: attempt %d lost its claim; stopping", set_id, attempt)
                return None
    sample = {i: sequences[i] for i in random_sequences(len(sequences), random_k)}
    lengths = {i: len(s) for i, s in enumerate(sequences)}
    rows, beaten = [], time.monotonic()
    for node in builder.results(lengths, sample):
        rows.append(
            NodeRecord(
                dst=node.dst,
                layer_index=node.layer,
                activation_index=node.index,
                max_activation=node.max_activation,
                data=store.encode_record(
                    [store.Sequence(sequences[i], acts) for i, acts in node.top],
                    [store.Sequence(sequences[i], acts) for i, acts in node.random],
                ),
            )
        )
        if time.monotonic() - beaten > 5:  # encoding a big model's records takes minutes
            beaten = time.monotonic()
            with sessions.begin() as session:
                if not store.beat(session, set_id, attempt):
                    return None
    with sessions.begin() as session:
        stored = store.finish_record_set(session, set_id, attempt, rows)
    log.info("Record set %s: %s, %d records", set_id, "stored" if stored else "lost", len(rows))
    return "finished" if stored else None


def build_records(task, set_id: str) -> str | None:
    """The body of ``actq.build_records``."""
    from worker import tasks

    settings = tasks._state.settings
    return execute_records(
        tasks.process_sessions(),
        set_id,
        model=tasks._state.model,
        worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        debug_delays=settings.debug_delays,
    )


def register(app) -> None:
    app.task(name=store.RECORDS_TASK, bind=True, ignore_result=True, acks_late=True)(build_records)
