"""models.self_test: the probabilities a model gives its self-test crops where it was registered (NULL until
computed); model_checks: each worker's self-test of each model version on its own device, precision and runtime

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("self_test", sa.JSON(), nullable=True))
    op.create_table(
        "model_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("runtime", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("max_difference", sa.Float(), nullable=False),
        sa.Column("tolerance", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("checked", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("worker_id", "model_id", "device", "precision", "runtime", name="uq_model_checks_one"),
    )
    op.create_index("ix_model_checks_model_id", "model_checks", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_model_checks_model_id", table_name="model_checks")
    op.drop_table("model_checks")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("self_test")
