"""cells.outline (x0, y0, x1, y1, ... in the image's pixels) and each cell's size and shape from it: area_um2,
diameter_um, perimeter_um (at the pixel size its image was read at), circularity, eccentricity (NULL: classified
before they were measured, or a single-cell crop, whose box is all there is)

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MEASURES = ("area_um2", "diameter_um", "perimeter_um", "circularity", "eccentricity")


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("outline", sa.JSON(), nullable=True))
        for name in MEASURES:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        for name in ("outline", *MEASURES):
            batch.drop_column(name)
