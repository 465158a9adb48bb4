"""The app's database: one engine per app, one session per request, closed at teardown."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from models.store.db import make_engine, make_sessionmaker


def init_app(app: Flask) -> None:
    settings = app.config["ACTQ_SETTINGS"]
    engine = make_engine(settings.database())
    app.extensions["actq.engine"] = engine
    app.extensions["actq.sessionmaker"] = make_sessionmaker(engine)
    app.teardown_appcontext(close_session)


def sessions() -> sessionmaker[Session]:
    return current_app.extensions["actq.sessionmaker"]


def get_session() -> Session:
    if "actq_session" not in g:
        g.actq_session = sessions()()
    return g.actq_session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("actq_session", None)
    if session is not None:
        session.close()
