"""A revision after the packaged head, for the tests only: a nullable column."""
from alembic import op
from sqlalchemy import Column, Text

from fhirimg.migrations import PACKAGED

revision = "0099_site_note"
down_revision = PACKAGED.head
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("site_identity") as batch:  # SQLite copies the table
        batch.add_column(Column("note", Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("site_identity") as batch:
        batch.drop_column("note")
