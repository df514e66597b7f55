"""Engine and sessions for SQLite (the embedded default) and PostgreSQL (the lab-wide setting).

SQLite runs with WAL, a 30 s busy timeout, foreign keys on and synchronous=NORMAL, so the web process and
a worker can write at once; PostgreSQL goes through psycopg 3 with pool_pre_ping. The schema is migrated
by Alembic (:func:`upgrade`); a database newer than this code is refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from lsm_core.errors import LsmError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url`` (the settings' ``database_url``: lsm_core.lab.settings); a SQLite file's folder is made."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)

        # pysqlite's own transaction handling defers BEGIN; take the write lock at the start instead
        # (BEGIN IMMEDIATE), so two writers wait on busy_timeout instead of failing on upgrade.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **kwargs)
    raise LsmError(f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:/// or postgresql://")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine | None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None  # db/migrations ships with the code and always holds at least one revision
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Migrate the database to this code's schema; refuse one that is newer. Returns the revision."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(engine)
    script = ScriptDirectory.from_config(cfg)
    current = current_revision(engine)
    if current is not None and not _known(script, current):
        raise LsmError(
            f"the database is at schema revision {current}, which this version of the app does not know: "
            "a newer version upgraded it. Update the app (git pull, then make install) before using this database."
        )
    head = script.get_current_head()
    assert head is not None  # db/migrations ships with the code and always holds at least one revision
    if current != head:
        command.upgrade(cfg, "head")
    return head


def _known(script, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False


def tables(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
