"""Alembic's environment script: Alembic runs this file, nothing imports it.

Revisions run on the connection that fhirimg.migrations.upgrade passes in, inside its
transaction and its schema lock; so there is no URL here, no engine and no offline mode.
"""
from __future__ import annotations

from alembic import context


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None or context.is_offline_mode():
        raise RuntimeError("fhirimg's migrations run through `fhirimg db upgrade`, which passes a connection")
    from fhirimg.migrations.tables import all_metadata
    # render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that.
    context.configure(connection=connection, target_metadata=all_metadata(),
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():  # the caller's transaction: Alembic opens none of its own
        context.run_migrations()


run_migrations()
