"""The check every process makes before it uses the database (through store.create_schema).

A new database is created from the models and stamped at the head, so `make run` and the
tests need no step of their own; every other mismatch is refused with one line saying what
to do. Refusing an unversioned database instead of adopting it here: adoption writes to the
operator's data (missing tables, triggers, the stamp) and deserves a backup first and a
command of its own, run once, not a race between the workers that happen to start.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection, Engine

from .lock import schema_lock
from .scripts import PACKAGED, Scripts
from .state import SchemaError, SchemaState, read_state, stamp
from .tables import all_metadata


def ensure_schema(engine: Engine, scripts: Scripts = PACKAGED) -> SchemaState:
    """Return the state of a database at the head, creating it if empty; else SchemaError."""
    with engine.connect() as conn:  # the usual case, read without the lock: already current
        state = read_state(conn, scripts)
    if state.kind == "current":
        return state
    with schema_lock(engine) as conn:
        state = read_state(conn, scripts)  # another process may have created it meanwhile
        if state.kind == "empty":
            return create_head_schema(conn, scripts)
    if state.kind != "current":
        raise SchemaError(state.refusal())
    return state


def create_head_schema(conn: Connection, scripts: Scripts) -> SchemaState:
    """Every table of today's models, their triggers and first rows, stamped at the head.

    The models and the revisions build the same schema (tests/migrations/test_baseline.py);
    the models are quicker (one create_all, no revision modules run), which matters to the
    tests that make a database each.
    """
    from ..store.schema import change_counter
    for md in all_metadata():
        md.create_all(conn, checkfirst=False)  # the caller saw none of these tables
    conn.execute(change_counter.insert().values(id=1, value=0, last_ms=0))
    stamp(conn, scripts, scripts.head)
    return read_state(conn, scripts)
