"""Opening the history for a long-running process (the app, a worker): upgrade, then register models."""
from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, session_factory, upgrade
from lsm_core.models import ModelStore
from lsm_core.registry import sync_models


def open_history(url: str | None = None, store: ModelStore | None = None) -> tuple[Engine, sessionmaker[Session]]:
    """An engine and session factory on an upgraded database whose Model rows match the model store."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    sync_models(sessions, store)
    return engine, sessions
