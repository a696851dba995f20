"""A database's schema as plain data, to compare two databases object by object.

SQLite: every object's CREATE statement as sqlite_master keeps it. PostgreSQL: columns
(type, collation, nullability, default), constraints, indexes, sequences, triggers and
functions of the connection's current schema, read from the catalogue, with the schema's
own name taken out so that two schemas compare.
"""
from __future__ import annotations

import re

from sqlalchemy import text


def schema_fingerprint(engine) -> dict[str, object]:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            return _sqlite(conn)
        return _postgres(conn)


def _sqlite(conn) -> dict[str, object]:
    rows = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")).all()
    return {f"{kind} {name}": (table, re.sub(r"\s+", " ", sql or "").strip()) for kind, name, table, sql in rows}


POSTGRES_QUERIES = {
    "column": """SELECT table_name || '.' || column_name, concat_ws(' ', data_type, character_maximum_length,
                        collation_name, is_nullable, column_default)
                 FROM information_schema.columns WHERE table_schema = current_schema()""",
    "constraint": """SELECT c.conname, t.relname || ' ' || c.contype::text || ' ' || pg_get_constraintdef(c.oid)
                     FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                     WHERE c.connamespace = current_schema()::regnamespace""",
    "index": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
    "sequence": """SELECT sequencename, concat_ws(' ', data_type, start_value, increment_by, cache_size, cycle)
                   FROM pg_sequences WHERE schemaname = current_schema()""",
    "trigger": """SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                  WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal""",
    "function": """SELECT p.proname, pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
                          || ' ' || p.prosrc
                   FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace""",
}


def _postgres(conn) -> dict[str, object]:
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    found = {}
    for kind, query in POSTGRES_QUERIES.items():
        for name, definition in conn.execute(text(query)).all():
            found[f"{kind} {name}"] = (definition or "").replace(f"{schema}.", "SCHEMA.")
    return found


def differences(left: dict, right: dict) -> list[str]:
    """What differs, one line per object (empty: the same schema)."""
    lines = []
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key):
            lines.append(f"{key}: {left.get(key, '<missing>')!r} != {right.get(key, '<missing>')!r}")
    return lines
