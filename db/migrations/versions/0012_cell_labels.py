"""cell_labels: what people say a cell is (its true class, or not a cell and why), every change kept

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cell_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("labelled_by", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=True),
        sa.Column("excluded", sa.String(length=16), nullable=True),
        sa.Column("predicted", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_cell_labels_cell_id", "cell_labels", ["cell_id"])
    op.create_index("ix_cell_labels_labelled_by", "cell_labels", ["labelled_by"])
    op.create_index("ix_cell_labels_batch", "cell_labels", ["batch_id", "current"])
    op.create_index(
        "uq_cell_labels_current",
        "cell_labels",
        ["cell_id", "labelled_by"],
        unique=True,
        sqlite_where=sa.text("current"),
        postgresql_where=sa.text("current"),
    )


def downgrade() -> None:
    op.drop_index("uq_cell_labels_current", table_name="cell_labels")
    op.drop_index("ix_cell_labels_batch", table_name="cell_labels")
    op.drop_index("ix_cell_labels_labelled_by", table_name="cell_labels")
    op.drop_index("ix_cell_labels_cell_id", table_name="cell_labels")
    op.drop_table("cell_labels")
