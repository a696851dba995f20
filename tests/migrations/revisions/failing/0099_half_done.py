"""A revision after the packaged head that fails half way, for the tests only."""
from alembic import op
from sqlalchemy import Column, Text

from fhirimg.migrations import PACKAGED

revision = "0099_half_done"
down_revision = PACKAGED.head
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", Column("note", Text))
    op.execute("INSERT INTO no_such_table VALUES (1)")


def downgrade() -> None:
    op.drop_table("half_done")
