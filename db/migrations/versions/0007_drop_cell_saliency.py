"""cells: drop the saliency column, never written (saliency maps live in saliency_runs)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("saliency")


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("saliency", sa.String(length=64), nullable=True))
