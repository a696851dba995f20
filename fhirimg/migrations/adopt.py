"""Adopting a database made by the release before versioned migrations.

Such a database holds the baseline's tables, or some of them: that release created a table
when the process first imported it (the audit export and forward cursors came with the
first `fhirimg audit` command). Its tables are checked column by column against the frozen
baseline; if they match, what is missing is created, the audit triggers are replaced by the
baseline's, and the database is stamped at the baseline, from where the revisions run.
A table whose columns differ is refused: it was not made by that release, and guessing
would hide the problem.
"""
from __future__ import annotations

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from .baseline import REVISION, baseline_metadata, build_baseline
from .scripts import Scripts
from .state import SchemaError, stamp


def adopt_unversioned(conn: Connection, scripts: Scripts) -> list[str]:
    """Check, complete and stamp at the baseline; return the tables and indexes created."""
    problems = column_differences(conn, baseline_metadata())
    if problems:
        raise SchemaError("cannot adopt this database, its tables differ from the last release without "
                          f"versions ({'; '.join(problems)}); nothing was changed")
    created = build_baseline(conn)
    stamp(conn, scripts, REVISION)
    return created


def column_differences(conn: Connection, expected: MetaData) -> list[str]:
    """For each expected table present: the columns it lacks and the ones it has in excess."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    problems = []
    for table in expected.sorted_tables:
        if table.name not in present:
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        want = set(table.columns.keys())
        if want - have:
            problems.append(f"{table.name} lacks {', '.join(sorted(want - have))}")
        if have - want:
            problems.append(f"{table.name} has unknown {', '.join(sorted(have - want))}")
    return problems
