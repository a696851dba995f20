"""Append-only, hash-chained storage of audit events.

Every row carries ``prev_hash`` and ``row_hash`` = SHA-256 over ``prev_hash``, its sequence
number and the canonical JSON of the event (sorted keys, no whitespace, UTF-8: RFC 8785's
form for the strings, integers and booleans an AuditEvent holds). Rows are chained in
commit order: the head (last seq and hash) is one row locked by each appending transaction.
Triggers refuse UPDATE and DELETE (audit/schema.py); ``verify_chain`` finds the first row
that was changed, removed or inserted out of order when someone bypassed them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from sqlalchemy import exists, func, select

from ..store import driver
from .fold import fold_behind
from .index import index_values
from .schema import audit_anchor, audit_event, audit_head, audit_index, audit_indexed

GENESIS = "0" * 64


def canonical_json(event: dict) -> bytes:
    """Sorted keys, no whitespace, UTF-8 unescaped (what RFC 8785 gives for the strings,
    integers and booleans an AuditEvent holds)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def row_hash(prev_hash: str, seq: int, content: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii") + b"\n" + str(seq).encode("ascii") + b"\n" + content)
    return digest.hexdigest()


@dataclass
class Appended:
    first_seq: int
    last_seq: int
    head_hash: str


def append_events(conn, events: list[tuple[dict, str | None, int]]) -> Appended | None:
    """Append (event, patient id, recorded ms) rows in the caller's transaction, chained after
    the current head; the head row's lock orders concurrent appenders (commit order = chain
    order). Prebuilt SQL on the driver's cursor: this runs for every write and for every
    group of reads (Core statements cost ~1 ms more a group).

    Their search values follow in batches (audit/fold.py): on SQLite an appender folds when
    enough wait; on PostgreSQL the group committer does, after a response has gone out."""
    if not events:
        return None
    if conn.dialect.name == "postgresql":
        return append_postgres(conn, events)
    seq, prev = driver.fetch_all(conn, HEAD_SQL)[0]  # SQLite: the write lock is held already
    first = seq + 1
    rows = []
    for event, patient, recorded_ms in events:
        seq += 1
        content = canonical_json(event)
        digest = row_hash(prev, seq, content)
        rows.append((seq, recorded_ms, bounded_id(patient), content.decode("utf-8"), prev, digest))
        prev = digest
    driver.run_many(conn, "INSERT INTO audit_event VALUES (?, ?, ?, ?, ?, ?)", rows)
    driver.run(conn, "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
    fold_behind(conn, seq)
    return Appended(first, seq, prev)


def append_postgres(conn, events: list[tuple[dict, str | None, int]]) -> Appended:
    """One statement (schema.POSTGRES_APPEND_FUNCTION): PostgreSQL numbers and chains the
    events under the head's lock with the same hash as row_hash."""
    first, last, head = driver.fetch_all(conn, APPEND_SQL, (driver.json_rows([postgres_event(e) for e in events]),))[0]
    return Appended(first, last, head)


def postgres_event(row: tuple[dict, str | None, int]) -> dict:
    """One (event, patient id, recorded ms) row as the append function takes it."""
    event, patient, recorded_ms = row
    return {"recorded_ms": recorded_ms, "patient": bounded_id(patient), "event": canonical_json(event).decode("utf-8")}


def bounded_id(patient: str | None) -> str | None:
    return patient if patient is None or len(patient) <= 64 else None  # an id is at most 64 characters


HEAD_SQL = "SELECT seq, hash FROM audit_head WHERE id = 1"
LOCK_HEAD_SQL = HEAD_SQL + " FOR UPDATE"  # PostgreSQL: what a prune holds while it re-anchors
APPEND_SQL = "SELECT first_seq, last_seq, head_hash FROM fhirimg_audit_append(%s::json)"


@dataclass
class Verdict:
    ok: bool
    count: int
    head_hash: str
    broken_at: int | None = None
    reason: str = ""
    anchor_seq: int = 0

    def describe(self) -> str:
        since = f" after the retention anchor at seq {self.anchor_seq}" if self.anchor_seq else ""
        if self.ok:
            return f"OK: {self.count} audit events{since}, head {self.head_hash}"
        return f"BROKEN at seq {self.broken_at}: {self.reason} (the {self.count} rows before it verify)"


def chain_start(conn) -> tuple[int, str]:
    """Where the chain begins: after the highest retention anchor (seq, the hash it links to)."""
    row = conn.execute(select(audit_anchor.c.through_seq, audit_anchor.c.hash)
                       .order_by(audit_anchor.c.through_seq.desc()).limit(1)).first()
    return (row.through_seq, row.hash) if row is not None else (0, GENESIS)


def verify_chain(conn, batch: int = 5000) -> Verdict:
    """Walk the chain in seq order; the first row whose hash, link or number is wrong is named."""
    anchor, prev = chain_start(conn)
    expected_seq, count, after = anchor + 1, 0, anchor
    t = audit_event
    if conn.execute(select(func.count()).select_from(t).where(t.c.seq <= anchor)).scalar():
        return Verdict(False, 0, prev, anchor, "rows at or below the retention anchor were not pruned", anchor)
    while True:
        rows = conn.execute(select(t.c.seq, t.c.event, t.c.prev_hash, t.c.row_hash).where(t.c.seq > after)
                            .order_by(t.c.seq).limit(batch)).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return Verdict(False, count, prev, expected_seq, f"row {expected_seq} is missing (next is {row.seq})",
                               anchor)
            if row.prev_hash != prev:
                return Verdict(False, count, prev, row.seq, "its prev_hash does not link to the row before", anchor)
            if row_hash(prev, row.seq, row.event.encode("utf-8")) != row.row_hash:
                return Verdict(False, count, prev, row.seq, "its content does not match its row_hash", anchor)
            prev, expected_seq, count = row.row_hash, row.seq + 1, count + 1
        after = rows[-1].seq
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).first()
    last = anchor + count
    if head is not None and (head.seq != last or head.hash != prev):
        return Verdict(False, count, prev, last + 1 if head.seq > last else head.seq,
                       f"the head says {head.seq} rows ending in {head.hash[:12]}..., the table ends at {last}",
                       anchor)
    hidden = first_unsearchable(conn, anchor)
    if hidden is not None:
        return Verdict(False, count, prev, hidden, "it has no search values although audit_indexed says it has "
                       "(a search would never find it)", anchor)
    return Verdict(True, count, prev, anchor_seq=anchor)


def first_unsearchable(conn, anchor: int, batch: int = 1000) -> int | None:
    """The first event up to the fold's watermark that should have search values and has
    none: moving the watermark by hand would otherwise hide events from every search while
    the chain still verifies. (fhirimg's events always have some - their action and codes;
    an event without a coded value has none to write, so it is not a gap.)"""
    indexed = conn.execute(select(audit_indexed.c.seq).where(audit_indexed.c.id == 1)).scalar() or 0
    e, i = audit_event, audit_index
    after = anchor
    while True:
        rows = conn.execute(select(e.c.seq, e.c.event).where(
            e.c.seq > after, e.c.seq <= indexed, ~exists(select(i.c.seq).where(i.c.seq == e.c.seq)))
            .order_by(e.c.seq).limit(batch)).all()
        for seq, event in rows:
            if index_values(orjson.loads(event)):
                return seq
        if len(rows) < batch:
            return None
        after = rows[-1].seq
