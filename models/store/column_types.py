"""Column types every table shares: JSON that survives a damaged row, and UTC timestamps.

Kept apart from the tables themselves (``models.store.tables``) because they are about how a
value is stored and read back on each backend, not about what the service stores.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, TypeDecorator
from sqlalchemy.dialects import postgresql


class CorruptValue(dict):
    """What a JSON column reads as when its stored text no longer parses (a row damaged on
    disk or edited by hand): empty, so a view shows nothing for it, and recognisable, so lists
    skip the row and say so (``corrupt_reason``) instead of failing the whole page."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class TolerantJSON(TypeDecorator):
    """JSONB on PostgreSQL, JSON on SQLite; a stored value that does not parse is read as a
    ``CorruptValue`` instead of raising while the whole result is loaded."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def result_processor(self, dialect, coltype):
        inner = super().result_processor(dialect, coltype)
        if inner is None:
            return None

        def process(value):
            try:
                return inner(value)
            except ValueError as error:
                return CorruptValue(f"stored JSON does not parse ({error})")

        return process


JSONType = TolerantJSON()


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
