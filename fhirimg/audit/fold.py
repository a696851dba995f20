"""Search values of audit events, folded into ``audit_index`` behind the chain (SQLite).

On SQLite a commit writes every page it touched to the WAL, and an event's ~11 search values
sit on as many leaves of the lookup index: written with the event, they were most of the cost
of making a read's event durable before its answer. So the chain (``audit_event``) is
appended alone, and the search values follow in batches: an appending transaction that finds
``FOLD_AT`` or more events without them folds up to ``FOLD_MAX`` in (events of one batch
share most leaves: the same client, action, outcome and codes). One request in ``FOLD_AT``
pays ~10 ms; the rest pay nothing. What is searched is never behind: an
AuditEvent search first folds whatever is left (``catch_up``).

``audit_indexed.seq`` says how far the fold has got. It moves in the transaction that writes
the rows, under SQLite's write lock, so a crash or two processes folding at once can neither
lose nor repeat a row. On PostgreSQL the append statement writes the search values (its WAL
records are row-sized, not pages) and moves ``audit_indexed`` itself: nothing is folded there.
"""
from __future__ import annotations

import orjson

from ..store import driver
from ..store.engine import WRITE_OPTION
from .index import index_values

# One appender in FOLD_AT folds (~0.08 ms an event): at 128 that is under 1% of requests, so
# p99 stays clean (measured on one connection: p50 0.09, p99 0.33, max 11 ms; at 64, p99 was
# 6.6 ms; search values written with each event: p50 0.23, p99 0.36 ms).
FOLD_AT = 128  # events without search values that make an appender fold
FOLD_MAX = 256  # events one appender folds at most
CATCH_UP_BATCH = 2000  # a search waiting for the fold takes bigger bites

WATERMARK_SQL = "SELECT seq FROM audit_indexed WHERE id = 1"
HEAD_SEQ_SQL = "SELECT seq FROM audit_head WHERE id = 1"
EVENTS_SQL = "SELECT seq, event FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?"


def fold_behind(conn, head: int) -> int:
    """In an SQLite appender's transaction, after it moved the head to `head`: fold if
    FOLD_AT events or more wait."""
    if head - driver.fetch_all(conn, WATERMARK_SQL)[0][0] < FOLD_AT:
        return 0
    return fold(conn, FOLD_MAX)


def fold(conn, limit: int) -> int:
    """Index up to `limit` events past the watermark, in the caller's SQLite write
    transaction; how many were indexed."""
    done = driver.fetch_all(conn, WATERMARK_SQL)[0][0]
    rows = driver.fetch_all(conn, EVENTS_SQL, (done, limit))
    if not rows:
        return 0
    values = [(seq, *value) for seq, event in rows for value in index_values(orjson.loads(event))]
    driver.run_many(conn, "INSERT INTO audit_index VALUES (?, ?, ?, ?)", values)
    driver.run(conn, "UPDATE audit_indexed SET seq = ? WHERE id = 1", (rows[-1][0],))
    return len(rows)


def backlog(conn) -> int:
    """Events in the chain whose search values are not written yet."""
    head = driver.fetch_all(conn, HEAD_SEQ_SQL)[0][0]
    return max(head - driver.fetch_all(conn, WATERMARK_SQL)[0][0], 0)


def catch_up(engine, batch: int = CATCH_UP_BATCH) -> int:
    """Fold everything committed so far (what a search must see); how many events."""
    if engine.dialect.name == "postgresql":
        return 0
    total = 0
    with engine.connect() as conn:
        if not backlog(conn):
            return 0
        conn.rollback()
        conn = conn.execution_options(**{WRITE_OPTION: True})
        while True:
            with conn.begin():
                count = fold(conn, batch)
            total += count
            if count < batch:
                return total
