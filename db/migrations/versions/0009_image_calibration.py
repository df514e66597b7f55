"""images: the pixel size used and where it came from, and the channel read; batches: which channel and z plane

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("pixel_size_um", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pixel_size_source", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("channel", sa.String(length=100), nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("channel", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("z", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("z")
        batch.drop_column("channel")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("channel")
        batch.drop_column("pixel_size_source")
        batch.drop_column("pixel_size_um")
