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
import json
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from .schema import audit_event, audit_head

GENESIS = "0" * 64


def canonical_json(event: dict) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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
    the current head; the head row's lock orders concurrent appenders (commit order = chain order)."""
    if not events:
        return None
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
                        .with_for_update()).first()
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    first = seq + 1
    rows = []
    for event, patient, recorded_ms in events:
        seq += 1
        content = canonical_json(event)
        digest = row_hash(prev, seq, content)
        rows.append({"seq": seq, "recorded_ms": recorded_ms, "patient": patient, "event": content.decode("utf-8"),
                     "prev_hash": prev, "row_hash": digest})
        prev = digest
    conn.execute(insert(audit_event), rows)
    if head is None:
        conn.execute(insert(audit_head).values(id=1, seq=seq, hash=prev))
    else:
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
    return Appended(first, seq, prev)


@dataclass
class Verdict:
    ok: bool
    count: int
    head_hash: str
    broken_at: int | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"OK: {self.count} audit events, head {self.head_hash}"
        return f"BROKEN at seq {self.broken_at}: {self.reason} (the {self.count} rows before it verify)"


def verify_chain(conn, batch: int = 5000) -> Verdict:
    """Walk the chain in seq order; the first row whose hash, link or number is wrong is named."""
    expected_seq, prev, count = 1, GENESIS, 0
    t = audit_event
    after = 0
    while True:
        rows = conn.execute(select(t.c.seq, t.c.event, t.c.prev_hash, t.c.row_hash).where(t.c.seq > after)
                            .order_by(t.c.seq).limit(batch)).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return Verdict(False, count, prev, expected_seq, f"row {expected_seq} is missing (next is {row.seq})")
            if row.prev_hash != prev:
                return Verdict(False, count, prev, row.seq, "its prev_hash does not link to the row before")
            if row_hash(prev, row.seq, row.event.encode("utf-8")) != row.row_hash:
                return Verdict(False, count, prev, row.seq, "its content does not match its row_hash")
            prev, expected_seq, count = row.row_hash, row.seq + 1, count + 1
        after = rows[-1].seq
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).first()
    if head is not None and (head.seq != count or head.hash != prev):
        return Verdict(False, count, prev, count + 1 if head.seq > count else head.seq,
                       f"the head says {head.seq} rows ending in {head.hash[:12]}..., the table has {count}")
    return Verdict(True, count, prev)
