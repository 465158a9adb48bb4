"""Reading a job for its result: the row without its runs, the response in binary format.

A result needs the job's status, error and stored response, not its runs (``get_job`` loads
them with the row, in a second query). And psycopg reads a ``bytea`` in PostgreSQL's text
format unless a cursor asks for binary: the server writes the 300 KB of a compressed
gpt2-small-sized response as 600 KB of hex and the driver parses it back, about 2 ms where the
binary format takes 0.4. SQLAlchemy has no per-query switch for that, so the response column
is read here with a binary cursor of the session's own connection (in its transaction), after
the ORM's query found the row, which applies the caller's visibility (``api.auth``). Other
drivers (SQLite) read the column through the ORM as before.
"""

from __future__ import annotations

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, defer, raiseload
from sqlalchemy.orm.attributes import set_committed_value

from models.store.lifecycle import JobStatus
from models.store.tables import Job

_READ_RESPONSE = f"SELECT response FROM {Job.__tablename__} WHERE id = %s"


def get_outcome(session: Session, job_id: str) -> Job | None:
    """The job for its result: its ``runs`` raise (not loaded); its ``response`` is the stored
    bytes as ``get_job`` gives them when it finished, else None (not read: only a finished job
    has a result to send)."""
    job = session.get(Job, job_id, options=[raiseload(Job.runs), defer(Job.response)])
    if job is not None and "response" in inspect(job).unloaded:
        finished = job.status == JobStatus.FINISHED.value
        response = stored_response(session, job_id) if finished else None
        set_committed_value(job, "response", response)
    return job


def stored_response(session: Session, job_id: str) -> bytes | None:
    """The job's compressed response (None when it has none), read in binary where the driver
    can (psycopg)."""
    driver = session.connection().connection.driver_connection
    if not type(driver).__module__.startswith("psycopg"):
        return session.scalar(select(Job.response).where(Job.id == job_id))
    with driver.cursor(binary=True) as cursor:
        cursor.execute(_READ_RESPONSE, (job_id,))
        row = cursor.fetchone()
    return None if row is None or row[0] is None else bytes(row[0])
