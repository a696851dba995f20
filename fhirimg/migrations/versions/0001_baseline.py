"""The schema of fhirimg before versioned migrations (release c06edf0).

Built from the frozen copy in fhirimg/migrations/baseline.py rather than from the models:
a revision must keep building the same schema after the models move on. Databases made by
that release are adopted (checked, completed, stamped here) by `fhirimg db upgrade`.
"""
from __future__ import annotations

from alembic import op

from fhirimg.migrations.baseline import REVISION, build_baseline

revision = REVISION
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    build_baseline(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("fhirimg does not downgrade below its baseline: restore a backup instead")
