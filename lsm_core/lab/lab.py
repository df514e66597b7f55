"""What every function of the shared service works on: a :class:`Lab`, opened by
:func:`lsm_core.lab.open_lab.open_lab`.

A ``Lab`` is the database (calling it opens a session, ``lab.begin()`` a transaction, as a SQLAlchemy
``sessionmaker`` does), the blob store, the model store and the settings they came from.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import session_factory
from lsm_core.imaging.readers.base import Limits
from lsm_core.lab.blobs import BlobStore
from lsm_core.lab.settings import Settings

if TYPE_CHECKING:
    from lsm_core.ml.models import ModelStore


class Lab:
    """The history (a session factory), the blob store, the model store and the settings."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, engine: Engine | None = None) -> None:
        self.sessions = sessions
        self.settings = settings
        self.engine = engine

    def __call__(self) -> Session:
        return self.sessions()

    def begin(self) -> Any:
        return self.sessions.begin()

    def begin_one_statement(self) -> Any:
        """Like :meth:`begin`, for a write that is one statement (reads before it allowed): on PostgreSQL the
        session's statements each commit by themselves, which saves the BEGIN and COMMIT round trips (a
        statement is atomic on its own; db.bulk.insert_together refuses to send several there). Elsewhere a
        transaction, as :meth:`begin`."""
        if self._autocommit is None:
            return self.sessions.begin()
        return self._autocommit.begin()

    @cached_property
    def _autocommit(self) -> sessionmaker[Session] | None:
        bind = self.engine or self.sessions.kw.get("bind")
        if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
            return None
        return session_factory(bind.execution_options(isolation_level="AUTOCOMMIT"))

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.blob_dir, helpers=self.settings.blob_helpers)

    @cached_property
    def store(self) -> ModelStore:
        from lsm_core.ml.models import ModelStore  # torch: only where models are needed

        root = self.settings.model_dir
        root.mkdir(parents=True, exist_ok=True)
        return ModelStore(root)

    @property
    def limits(self) -> Limits:
        return self.settings.limits

    def dispose(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
