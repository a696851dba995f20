"""Search values of audit events, folded into ``audit_index`` behind the chain.

An event's ~12 search values, written with it, were most of the cost of making a read's
event durable before its answer: on SQLite each sits on its own leaf of the lookup index
(24.7 WAL pages a commit), on PostgreSQL they took the append from 0.25 to 0.42 ms (36 index
tuples more). So the chain (``audit_event``) is appended alone, and the search values follow
in batches (events of one batch share most leaves: the same client, action, outcome, codes):

- SQLite: an appending transaction that finds ``FOLD_AT`` or more events without them folds
  up to ``FOLD_MAX`` in (``fold_behind``): one request in ``FOLD_AT`` pays ~10 ms. There is
  one writer at a time, so nothing else is needed.
- PostgreSQL: appenders hold the chain head's lock until they commit, so a fold there would
  stall every appender behind it. The group committer counts what its process appended and
  folds, in its own transaction, after a response has gone out (``GroupCommitter.fold_if_due``). Folders
  serialize on ``audit_indexed``'s row lock.

What is searched is never behind: an AuditEvent search on any parameter but date and _id
first folds whatever is left (``catch_up``).

``audit_indexed.seq`` says how far the fold has got. It moves in the transaction that writes
the rows, under SQLite's write lock or PostgreSQL's row lock, so a crash or two processes
folding at once can neither lose nor repeat a row. Chain rows become visible in seq order
(an appender holds the head until it commits), so a fold never skips an event.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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
ANCHOR_SQL = "SELECT COALESCE(MAX(through_seq), 0) FROM audit_anchor"


@dataclass(frozen=True)
class FoldSql:
    """A fold's statements in the driver's own dialect (prebuilt SQL on the driver cursor)."""
    watermark: str  # PostgreSQL: locked, so that folders take turns
    events: str
    insert: str
    move: str


FOLD_SQL = {
    "sqlite": FoldSql(WATERMARK_SQL, "SELECT seq, event FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?",
                      "INSERT INTO audit_index VALUES (?, ?, ?, ?)", "UPDATE audit_indexed SET seq = ? WHERE id = 1"),
    "postgresql": FoldSql(WATERMARK_SQL + " FOR UPDATE",
                          "SELECT seq, event FROM audit_event WHERE seq > %s ORDER BY seq LIMIT %s",
                          "INSERT INTO audit_index (seq, param, system, value) SELECT (v->>0)::bigint, v->>1, "
                          "v->>2, v->>3 FROM json_array_elements(%s::json) AS v",
                          "UPDATE audit_indexed SET seq = %s WHERE id = 1"),
}


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
    this transaction has it), at most up to seq `through`, in the caller's write transaction
    (SQLite: the write lock held; PostgreSQL: the watermark's row is locked here); how many
    were indexed."""
    sql = FOLD_SQL[conn.dialect.name]
    if done is None:
        done = driver.fetch_all(conn, sql.watermark)[0][0]
    if through is not None:
        limit = min(limit, max(through - done, 0))
        if not limit:
            return 0
    rows = driver.fetch_all(conn, sql.events, (done, limit))
    if not rows:
        return 0
    values = [(seq, *value) for seq, event in rows for value in index_values(orjson.loads(event))]
    if conn.dialect.name == "postgresql":
        driver.run(conn, sql.insert, (driver.json_rows(values),))
    else:
        driver.run_many(conn, sql.insert, values)
    driver.run(conn, sql.move, (rows[-1][0],))
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


def fold_waiting(engine, batch: int = FOLD_MAX, rounds: int = 8) -> int:
    """PostgreSQL, after a response (GroupCommitter.fold_if_due): fold what waits, every process's
    events alike, a batch a transaction; at most `rounds` batches (the next call goes on).
    A failure is logged: searches fold before they read, and ``fhirimg audit status`` shows
    what waits."""
    total = 0
    try:
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
            for _ in range(rounds):
                with conn.begin():
                    count = fold(conn, batch)
                total += count
                if count < batch:
                    break
    except Exception:  # noqa: BLE001 - after the response: nobody to answer, the next fold retries
        log.exception("audit search values not folded in (searches will retry and fail loudly)")
    return total
