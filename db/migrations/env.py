"""Alembic environment: the engine comes from db.session.upgrade (config.attributes["engine"]).

On SQLite, foreign keys are switched off while migrations run (outside any transaction, where SQLite
honours the pragma) and on again after a ``foreign_key_check``: rebuilding a table in batch mode drops the
old table, and with foreign keys on that DROP would first delete every row referring to it, cascading to
images and cells.
"""

from alembic import context

from db.schema import Base
from lsm_core.errors import LsmError

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    raise LsmError("migrations run through db.session.upgrade(engine) (`python -m lsm_core db upgrade`)")

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:  # on the DBAPI connection: SQLAlchemy's would begin a transaction first
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise LsmError(
                        f"the migration left {len(broken)} rows pointing at missing rows; nothing was changed"
                    )
        connection.commit()
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
