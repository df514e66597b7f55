"""ids of batches, jobs and models are never reused; batches carry a revision

SQLite gives a new row the largest id + 1, so deleting the newest batch made the next one take its id: the
audit trail then named two batches with one id, and old links changed meaning. SQLite's AUTOINCREMENT
keeps the largest id ever used (in sqlite_sequence); it can only be declared when a table is created, so
the three tables are rebuilt (foreign keys are switched off around the rebuild by db/migrations/env.py, or
SQLite would cascade the implicit DELETE of the old table to images and cells). The sequence of batches is
then raised past every batch id the audit trail mentions, so ids deleted before this migration stay
unused too. PostgreSQL's sequences never hand out an id twice: there only the revision is added.

``batches.revision`` counts the changes people make to a batch (rename, files added): an action on a batch
names the revision its user saw, and is refused if the batch changed since.

Revision ID: 0006
Revises: 0005
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("models", "batches", "jobs")


def _highest_audited(bind, kind: str) -> int:
    """The largest id of ``kind`` ("batch") that the audit trail names (as "batch 12")."""
    pattern = re.compile(rf"^{kind} (\d+)$")
    top = 0
    for (target,) in bind.execute(sa.text("SELECT target FROM audit_events WHERE target LIKE :p"), {"p": f"{kind} %"}):
        match = pattern.match(target or "")
        if match:
            top = max(top, int(match.group(1)))
    return top


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    floor = {"batches": _highest_audited(bind, "batch")}
    for table in TABLES:
        top = max(bind.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar() or 0, floor.get(table, 0))
        if not top:
            continue
        if bind.execute(sa.text("SELECT count(*) FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar():
            bind.execute(
                sa.text("UPDATE sqlite_sequence SET seq = max(seq, :top) WHERE name = :t"), {"t": table, "top": top}
            )
        else:
            bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :top)"), {"t": table, "top": top})


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for table in TABLES:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": False}):
                pass
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("revision")
