"""The Alembic migrations build exactly the schema of models.store.tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import migrations
from models.store.db import make_engine
from models.store.tables import Base


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_empty_url")


def test_upgrade_builds_the_models_schema(empty_url):
    migrations.upgrade(empty_url)
    assert _diff(empty_url) == []
    assert {"jobs", "runs", "job_tags", "alembic_version"} <= _tables(empty_url)


def test_downgrade_removes_everything_and_upgrade_is_repeatable(empty_url):
    migrations.upgrade(empty_url)
    migrations.downgrade(empty_url)
    assert _tables(empty_url) == {"alembic_version"}
    migrations.upgrade(empty_url)
    migrations.upgrade(empty_url)  # already at head: nothing to do
    assert _diff(empty_url) == []


def test_status_check_constraint_is_named(empty_url):
    migrations.upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        names = {c["name"] for c in inspect(engine).get_check_constraints("jobs")}
    finally:
        engine.dispose()
    assert "ck_jobs_status" in names
