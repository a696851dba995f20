"""The schema lock: one process at a time creates, adopts or upgrades the schema."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from ..store.engine import WRITE_OPTION

# pg_advisory_xact_lock key, the same since the store first took it (one per database).
SCHEMA_LOCK_KEY = 7262436


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A write transaction holding the schema lock until it commits or rolls back.

    Several processes start on a new database at once (gunicorn workers, RQ workers,
    `fhirimg run`'s server and worker): each sees no tables, and all but one would fail
    with "already exists". SQLite's write lock (BEGIN IMMEDIATE) or a PostgreSQL advisory
    lock serialises them; DDL is transactional on both, so the others then find the schema
    whole and stamped. `fhirimg db upgrade` takes the same lock: a process starting during
    an upgrade waits for it and then sees the new revision.
    """
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
            yield conn
