"""cells: the reporter signal of every other channel; images: each channel's background and how it was found

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("signal", sa.JSON(), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("reporters", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("reporters")
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("signal")
