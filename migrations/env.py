"""Alembic environment: runs migrations online against the URL the caller passed.

The URL comes from ``config.attributes["url"]`` (set by ``migrations.upgrade``), ``-x url=...`` on
the alembic command line, or ``ACTQ_DATABASE_URL``. ``render_as_batch`` because the embedded mode
migrates SQLite, which can only alter a table by copying it.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from models.settings import Settings
from models.store.db import make_engine
from models.store.tables import Base

config = context.config
if config.attributes.get("configure_logging", True) and config.config_file_name:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or Settings().database()
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("actq migrations run online only; pass a database URL")
run_migrations_online()
