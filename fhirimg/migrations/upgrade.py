"""`fhirimg db upgrade`: bring a database to this fhirimg's head revision, in one transaction.

Everything happens under the schema lock in a single transaction (DDL is transactional on
SQLite and PostgreSQL): a revision that fails leaves the database as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from alembic import command
from sqlalchemy.engine import Engine

from .adopt import adopt_unversioned
from .baseline import REVISION
from .lock import schema_lock
from .scripts import PACKAGED, Scripts
from .startup import create_head_schema
from .state import SchemaError, SchemaState, read_state


@dataclass
class Upgrade:
    """What an upgrade found and did."""

    before: SchemaState
    after: SchemaState
    adopted: list[str] | None = None  # tables and indexes created by adoption (None: none ran)
    steps: list[str] = field(default_factory=list)  # revisions applied, oldest first

    def describe(self) -> str:
        if self.before.kind == "current":
            return f"already at {self.after.revision} (head); nothing to do"
        if self.before.kind == "empty":
            return f"created the schema at {self.after.revision} (head)"
        lines = []
        if self.adopted is not None:
            extra = f"; created {', '.join(self.adopted)}" if self.adopted else ""
            lines.append(f"adopted the database of a release without versions as {REVISION}{extra}")
        lines += [f"applied {step}" for step in self.steps]
        lines.append(f"now at {self.after.revision} (head)")
        return "\n".join(lines)


def upgrade_schema(engine: Engine, scripts: Scripts = PACKAGED) -> Upgrade:
    """Create, adopt or upgrade to the head; SchemaError for a schema newer than this fhirimg."""
    with schema_lock(engine) as conn:
        before = read_state(conn, scripts)
        if before.kind == "ahead":
            raise SchemaError(before.refusal())
        if before.kind in ("empty", "current"):
            after = create_head_schema(conn, scripts) if before.kind == "empty" else before
            return Upgrade(before, after)
        adopted = adopt_unversioned(conn, scripts) if before.kind == "unversioned" else None
        steps = scripts.steps(REVISION if adopted is not None else before.revisions[0])
        command.upgrade(scripts.config(conn), "head")
        return Upgrade(before, read_state(conn, scripts), adopted, steps)
