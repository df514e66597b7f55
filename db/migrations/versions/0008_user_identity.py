"""users: issuer and subject, who a signed-in person is at the identity provider

A person was their e-mail address alone, so any account the provider gave that address became them. Now a
signed-in person is the pair (``iss``, ``sub``) of their ID token, unique together; ``name`` stays the e-mail
they first signed in with. Existing rows keep both empty: each is linked to the first account that signs in
with its e-mail after this migration (lsm_core.lab.accounts.sign_in). Both engines allow any number of rows
with empty identities under the unique constraint (NULLs are distinct).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("issuer", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(length=255), nullable=True))
        batch.create_unique_constraint("uq_users_issuer_subject", ["issuer", "subject"])


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_issuer_subject", type_="unique")
        batch.drop_column("subject")
        batch.drop_column("issuer")
