"""What a database holds, compared with what this fhirimg knows, and the one-line verdicts.

Alembic records the schema's revision in ``alembic_version``. A database with fhirimg
tables but no revision was made by a release before versioned migrations.
"""
from __future__ import annotations

from dataclasses import dataclass

import click
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from .scripts import PACKAGED, Scripts
from .tables import table_names

UPGRADE_HINT = "stop fhirimg's servers and workers, back up the database and run `fhirimg db upgrade`"


class SchemaError(click.ClickException):
    """The database's schema is not the one this fhirimg runs on.

    A ClickException so that every command that meets it (serve, run, worker, audit, db ...)
    prints its one line and exits 1 instead of a traceback; elsewhere an ordinary Exception.
    """


@dataclass(frozen=True)
class SchemaState:
    revisions: tuple[str, ...]  # alembic_version's rows (one, without branches)
    has_tables: bool  # any fhirimg table present
    head: str  # the newest revision this fhirimg knows
    known: frozenset[str]

    @property
    def kind(self) -> str:
        """empty, unversioned, current, behind (older, known) or ahead (unknown: newer)."""
        if not self.revisions:
            return "unversioned" if self.has_tables else "empty"
        if set(self.revisions) == {self.head}:
            return "current"
        return "behind" if set(self.revisions) <= self.known else "ahead"

    @property
    def revision(self) -> str:
        return ", ".join(self.revisions) or "none"

    def describe(self) -> str:
        """One line for `fhirimg db current`."""
        return {
            "empty": f"no fhirimg tables yet: the first start creates them at {self.head} (head)",
            "current": f"{self.revision} (head): the schema is current",
            "unversioned": f"no revision: {self.refusal()}",
            "behind": f"{self.revision}: {self.refusal()}",
            "ahead": f"{self.revision}: {self.refusal()}",
        }[self.kind]

    def refusal(self) -> str:
        """Why this fhirimg will not run on the database, and what to do; '' if it will."""
        if self.kind == "unversioned":
            return ("the database was made by a fhirimg release before versioned migrations "
                    f"(tables but no revision): {UPGRADE_HINT}")
        if self.kind == "behind":
            return (f"the database schema is at revision {self.revision}, older than this fhirimg's "
                    f"{self.head}: {UPGRADE_HINT}")
        if self.kind == "ahead":
            return (f"the database schema is at revision {self.revision}, which this fhirimg does not know "
                    f"(its newest is {self.head}): a newer fhirimg upgraded it; run that release, "
                    "or restore the backup taken before its upgrade")
        return ""


def read_state(conn: Connection, scripts: Scripts) -> SchemaState:
    """The schema's revision and whether fhirimg tables exist (two catalogue queries)."""
    present = set(inspect(conn).get_table_names())
    revisions = MigrationContext.configure(conn).get_current_heads() if "alembic_version" in present else ()
    return SchemaState(revisions=tuple(revisions), has_tables=bool(present & table_names()),
                       head=scripts.head, known=scripts.known)


def stamp(conn: Connection, scripts: Scripts, revision: str) -> None:
    """Record `revision` as the schema's, creating alembic_version if needed (Alembic's own
    stamp: no revision runs)."""
    MigrationContext.configure(conn).stamp(scripts.directory, revision)


def current_state(engine: Engine, scripts: Scripts = PACKAGED) -> SchemaState:
    """The database's schema state, read only."""
    with engine.connect() as conn:
        return read_state(conn, scripts)
