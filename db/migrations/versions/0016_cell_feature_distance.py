"""cells.feature_distance: how far the cell lies from its model's training cells in the features the model
classifies by (lsm_core.ml.shift; NULL: classified before it was measured, or by a model without a reference)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("feature_distance", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("feature_distance")
