"""Alembic environment: the engine comes from db.session (config.attributes["engine"]) or LSM_DATABASE_URL."""
from alembic import context

from db.schema import Base
from db.session import make_engine

config = context.config
engine = config.attributes.get("engine") or make_engine()

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
