"""Search values of audit events, folded into ``audit_index`` behind the chain (SQLite).

On SQLite a commit writes every page it touched to the WAL, and an event's ~11 search values
sit on as many leaves of the lookup index: written with the event, they were most of the cost
of making a read's event durable before its answer. So the chain (``audit_event``) is
appended alone, and the search values follow in batches: an appending transaction that finds
``FOLD_AT`` or more events without them folds up to ``FOLD_MAX`` in (events of one batch
share most leaves: the same client, action, outcome and codes). One request in ``FOLD_AT``
pays ~10 ms; the rest pay nothing. What is searched is never behind: an
AuditEvent search on any parameter but date and _id first folds whatever is left
(``catch_up``).

``audit_indexed.seq`` says how far the fold has got. It moves in the transaction that writes
the rows, under SQLite's write lock, so a crash or two processes folding at once can neither
lose nor repeat a row. On PostgreSQL the append statement writes the search values (its WAL
records are row-sized, not pages) and moves ``audit_indexed`` itself: nothing is folded there.
"""
from __future__ import annotations

import logging

import orjson

from ..store import driver
from ..store.engine import WRITE_OPTION
from .index import index_values

log = logging.getLogger("fhirimg.audit")

# One appender in FOLD_AT folds (~0.08 ms an event): at 128 that is under 1% of requests, so
# p99 stays clean (measured on one connection: p50 0.09, p99 0.33, max 11 ms; at 64, p99 was
# 6.6 ms; search values written with each event: p50 0.23, p99 0.36 ms).
FOLD_AT = 128  # events without search values that make an appender fold
FOLD_MAX = 256  # events one appender folds at most
CATCH_UP_BATCH = 2000  # a search waiting for the fold takes bigger bites

WATERMARK_SQL = "SELECT seq FROM audit_indexed WHERE id = 1"
HEAD_SEQ_SQL = "SELECT seq FROM audit_head WHERE id = 1"
EVENTS_SQL = "SELECT seq, event FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?"
ANCHOR_SQL = "SELECT COALESCE(MAX(through_seq), 0) FROM audit_anchor"


def fold_behind(conn, head: int) -> int:
    """In an SQLite appender's transaction, after it moved the head to `head`: fold if
    FOLD_AT events or more wait. Inside a savepoint: an event whose search values cannot be
    written must not fail the appender's own event (every request would answer 503); the
    fold is logged and left to the next appender or search, which say so again."""
    done = driver.fetch_all(conn, WATERMARK_SQL)[0][0]
    if head - done < FOLD_AT:
        return 0
    driver.run(conn, "SAVEPOINT audit_fold")
    try:
        count = fold(conn, FOLD_MAX, done=done)
    except Exception:  # noqa: BLE001 - the chain row is what must commit
        driver.run(conn, "ROLLBACK TO audit_fold")
        driver.run(conn, "RELEASE audit_fold")
        log.exception("audit search values not folded in (searches will retry and fail loudly)")
        return 0
    driver.run(conn, "RELEASE audit_fold")
    return count


def fold(conn, limit: int, through: int | None = None, done: int | None = None) -> int:
    """Index up to `limit` events past the watermark `done` (read here unless the caller in
    this transaction has it), at most up to seq `through`, in the caller's SQLite write
    transaction; how many were indexed."""
    if done is None:
        done = driver.fetch_all(conn, WATERMARK_SQL)[0][0]
    if through is not None:
        limit = min(limit, max(through - done, 0))
        if not limit:
            return 0
    rows = driver.fetch_all(conn, EVENTS_SQL, (done, limit))
    if not rows:
        return 0
    values = [(seq, *value) for seq, event in rows for value in index_values(orjson.loads(event))]
    driver.run_many(conn, "INSERT INTO audit_index VALUES (?, ?, ?, ?)", values)
    driver.run(conn, "UPDATE audit_indexed SET seq = ? WHERE id = 1", (rows[-1][0],))
    return len(rows)


def backlog(conn) -> int:
    """Events in the chain whose search values are not written yet (pruned ones are gone)."""
    head = driver.fetch_all(conn, HEAD_SEQ_SQL)[0][0]
    done = max(driver.fetch_all(conn, WATERMARK_SQL)[0][0], driver.fetch_all(conn, ANCHOR_SQL)[0][0])
    return max(head - done, 0)


def catch_up(engine, batch: int = CATCH_UP_BATCH) -> int:
    """Fold everything committed before the call (what a search must see); how many events.
    Events appended meanwhile are left to their appenders: a search under constant load
    does not chase the head."""
    if engine.dialect.name == "postgresql":
        return 0
    total = 0
    with engine.connect() as conn:
        if not backlog(conn):
            return 0
        head = driver.fetch_all(conn, HEAD_SEQ_SQL)[0][0]
        conn.rollback()
        conn = conn.execution_options(**{WRITE_OPTION: True})
        while True:
            with conn.begin():
                count = fold(conn, batch, through=head)
            total += count
            if count < batch:
                return total
