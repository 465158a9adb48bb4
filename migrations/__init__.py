"""Alembic migrations for actq's schema, shipped inside the package so ``actq db upgrade`` works
from an installed wheel. ``upgrade(url)`` is what the CLI, the embedded mode and the tests call.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from models.settings import sqlalchemy_url

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    config.attributes["url"] = sqlalchemy_url(url)
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (creating the schema if empty)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
