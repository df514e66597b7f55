"""images: the z plane the cells were found on (from 0; NULL: no z stack) and the app version that classified
the image (NULL: classified before versions were recorded)

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("z_plane", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("app_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("app_version")
        batch.drop_column("z_plane")
