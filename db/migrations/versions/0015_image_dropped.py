"""images.dropped: the objects cell finding did not keep, {"debris": n, "clump": n, "boxes": [[x, y, w, h,
why], ...]} (the first 500 boxes; NULL: classified before they were recorded)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("dropped", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("dropped")
