"""Prebuilt SQL on the DBAPI cursor of a SQLAlchemy connection, for the write path's hot statements.

A push runs a handful of statements whose text never changes. Through SQLAlchemy each cost
~100-130 us of client CPU more than on psycopg's cursor (execution context, result
object; measured 168 against 70 us for ``SELECT 1``), and a Core statement built per call
another ~300 us: together about a quarter of the server's CPU per push. These statements
run on the same connection and transaction as the SQLAlchemy ones around them; errors are
raised as SQLAlchemy's exception classes, so callers and the app's handlers (409 on
serialization failures, 503 when the database is unavailable) see no difference.

Parameters of many rows go as ONE JSON text (``json_to_recordset``): psycopg dumps a
Python list as an array in Python, ~5 us per element (a text[] of 20 values took 110 us
more than a JSON text of the same 20).
"""
from __future__ import annotations

import orjson
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError


def execute(conn: Connection, sql: str, params: dict | tuple | None = None):
    """Run one statement on the connection's driver cursor; returns the cursor (fetch from it).

    psycopg prepares a text on the server once it has run five times on the connection
    (parsed once); it is still planned for its values at every execution (engine.py)."""
    dbapi_conn = raw_connection(conn)
    try:
        cursor = dbapi_conn.cursor()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise translated(conn, sql, params, exc) from exc
    try:
        cursor.execute(sql, params) if params is not None else cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        cursor.close()
        raise translated(conn, sql, params, exc) from exc
    return cursor


def raw_connection(conn: Connection):
    """The driver's connection (a detached one - the audit committer's - has no driver_connection)."""
    fairy = conn.connection
    return fairy.driver_connection or fairy.dbapi_connection


def fetch_all(conn: Connection, sql: str, params: dict | tuple | None = None) -> list[tuple]:
    cursor = execute(conn, sql, params)
    try:
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise translated(conn, sql, params, exc) from exc
    finally:
        cursor.close()


def run(conn: Connection, sql: str, params: dict | tuple | None = None) -> int:
    """Execute a statement that returns no rows; returns its row count."""
    cursor = execute(conn, sql, params)
    try:
        return cursor.rowcount
    finally:
        cursor.close()


def run_many(conn: Connection, sql: str, rows: list) -> None:
    """``executemany`` of one statement on the driver cursor (SQLite's write path)."""
    cursor = raw_connection(conn).cursor()
    try:
        cursor.executemany(sql, rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise translated(conn, sql, None, exc) from exc
    finally:
        cursor.close()


def translated(conn: Connection, sql: str, params, exc: Exception) -> DBAPIError:
    """The SQLAlchemy exception SQLAlchemy itself would raise (IntegrityError, OperationalError, ...).
    A connection that is broken is invalidated, so the pool does not hand it out again (its
    other connections, once idle a while, are checked before reuse: engine.ping_after_idle)."""
    dialect = conn.dialect
    is_disconnect = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if is_disconnect and not conn.invalidated:
        conn.invalidate(exc)
    return DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error,
                               connection_invalidated=is_disconnect, dialect=dialect)


def json_rows(rows: list) -> str:
    """Rows (dicts or lists) as one JSON text for ``json_to_recordset``/``json_array_elements``."""
    return orjson.dumps(rows).decode()
