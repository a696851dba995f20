"""Export and prune: the audit trail leaves the database only after it was written out.

``export`` streams the events recorded in a time range as NDJSON (portable.exported_resource:
seq as id, recorded time as meta.lastUpdated, the chain fields in an extension) and raises the
export watermark to the highest seq that, from the chain's start, has now been exported
without a gap. ``prune`` removes the events older than ``retention_days``, but never one
above the watermark: in one transaction it adds the retention anchor (the last pruned row's
hash), deletes up to it (the triggers allow it only at or below the anchor) and records
itself as an event. Reading the trail is auditable too: an export records an event.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import orjson
from sqlalchemy import delete, func, insert, select

from ..store import driver
from ..store.engine import WRITE_OPTION
from ..store.records import format_instant
from .chain import LOCK_HEAD_SQL, append_events, chain_start
from .cursors import audit_export, export_watermark
from .events import Actor, event_rows
from .fold import FOLD_SQL
from .portable import exported_resource
from .schema import audit_anchor, audit_event, audit_head, audit_index

DAY_MS = 86_400_000
Clock = Callable[[], int]


def now_ms() -> int:
    return int(time.time() * 1000)


class RetentionDisabled(Exception):
    """retention_days is 0: the trail is kept for ever, nothing may be pruned."""


@dataclass
class ExportResult:
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    watermark_before: int = 0
    watermark: int = 0  # after this export
    gap_at: int | None = None  # the first seq after the watermark this export did not hold

    def describe(self) -> str:
        span = f" (seq {self.first_seq}..{self.last_seq})" if self.count else ""
        moved = (f"export watermark {self.watermark_before} -> {self.watermark}"
                 if self.watermark > self.watermark_before else f"export watermark stays at {self.watermark}")
        why = (f": seq {self.gap_at} was not in this export (recorded outside --since/--until)"
               if self.gap_at is not None else "")
        return f"exported {self.count} audit events{span}; {moved}{why}"


def write_export(conn, out: IO[str], since_ms: int, until_ms: int, batch: int = 5000) -> ExportResult:
    """Write the events recorded in [since_ms, until_ms] to `out` in seq order, a batch at a time."""
    start = max(chain_start(conn)[0], export_watermark(conn))
    result = ExportResult(watermark_before=start)
    expected, after, t = start + 1, 0, audit_event
    while True:
        rows = conn.execute(select(t.c.seq, t.c.recorded_ms, t.c.event, t.c.prev_hash, t.c.row_hash)
                            .where(t.c.seq > after, t.c.recorded_ms >= since_ms, t.c.recorded_ms <= until_ms)
                            .order_by(t.c.seq).limit(batch)).all()
        if not rows:
            break
        out.write("".join(orjson.dumps(exported_resource(row)).decode("utf-8") + "\n" for row in rows))
        for row in rows:  # the watermark moves over consecutive seqs only
            if result.gap_at is None and row.seq == expected:
                expected += 1
            elif result.gap_at is None and row.seq > expected:
                result.gap_at = expected
        result.count += len(rows)
        result.first_seq = result.first_seq or rows[0].seq
        result.last_seq = after = rows[-1].seq
    result.watermark = expected - 1
    return result


def record_export(engine, result: ExportResult, actor: Actor, since_ms: int, until_ms: int,
                  clock: Clock = now_ms) -> None:
    """After the file is written: raise the watermark and record the export as an event, in one transaction."""
    recorded = clock()
    act = actor.act("search-type", recorded, query=f"date=ge{format_instant(since_ms)}"
                    f"&date=le{format_instant(until_ms)}",
                    details={"export": "fhirimg audit export", "exported": str(result.count),
                             "first_seq": str(result.first_seq or ""), "last_seq": str(result.last_seq or ""),
                             "watermark": str(result.watermark)})
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        lock_head(conn)  # orders concurrent exports: the watermark only goes up
        if result.watermark > export_watermark(conn):
            conn.execute(insert(audit_export).values(through_seq=result.watermark, exported_ms=recorded,
                                                     events=result.count))
        append_events(conn, event_rows(act, [None]))


def export_audit(engine, out: IO[str], since_ms: int, until_ms: int, actor: Actor, clock: Clock = now_ms,
                 flush: Callable[[], None] = lambda: None) -> ExportResult:
    """Export, make the output durable (`flush`), then record the watermark and the export event."""
    with engine.connect() as conn:
        result = write_export(conn, out, since_ms, until_ms)
    flush()
    record_export(engine, result, actor, since_ms, until_ms, clock)
    return result


def lock_head(conn) -> None:
    """Take the chain head's row lock (SQLite: the write transaction already excludes others)."""
    if conn.dialect.name == "postgresql":
        driver.fetch_all(conn, LOCK_HEAD_SQL)


@dataclass
class PrunePlan:
    retention_days: int
    cutoff_ms: int  # events recorded before this are old enough
    anchor: int  # the chain starts after this seq today
    old_through: int  # the last seq of the chain's prefix that is old enough
    watermark: int
    through_seq: int  # what is pruned: min(old_through, watermark), or the anchor (nothing)
    pruned: int = 0
    anchor_hash: str = ""

    @property
    def kept_back(self) -> int:
        """Events old enough, kept because no export holds them yet."""
        return max(0, self.old_through - max(self.watermark, self.anchor))

    def describe(self, dry_run: bool = False) -> str:
        verb = "would prune" if dry_run else "pruned"
        count = self.through_seq - self.anchor if dry_run else self.pruned
        text = (f"{verb} {count} audit events recorded before {format_instant(self.cutoff_ms)} "
                f"(retention_days = {self.retention_days})")
        if count:
            text += f", through seq {self.through_seq}"
            text += f"; new anchor {self.anchor_hash}" if self.anchor_hash else ""
        if self.kept_back:
            text += (f"; kept back {self.kept_back} old enough but not yet exported (export watermark "
                     f"{self.watermark}): run `fhirimg audit export` first")
        return text


def plan_prune(conn, retention_days: int, now: int) -> PrunePlan:
    if retention_days <= 0:
        raise RetentionDisabled("audit.retention_days is 0 (keep for ever): nothing to prune")
    cutoff = now - retention_days * DAY_MS
    anchor = chain_start(conn)[0]
    head = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar_one()
    first_young = conn.execute(select(func.min(audit_event.c.seq))
                               .where(audit_event.c.recorded_ms >= cutoff)).scalar()
    old_through = head if first_young is None else first_young - 1
    watermark = export_watermark(conn)
    return PrunePlan(retention_days, cutoff, anchor, old_through, watermark,
                     max(anchor, min(old_through, watermark)))


def prune_audit(engine, retention_days: int, actor: Actor, clock: Clock = now_ms, dry_run: bool = False) -> PrunePlan:
    """Remove the exported events older than retention_days, anchoring the chain after them (one transaction)."""
    now = clock()
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        lock_head(conn)
        if conn.dialect.name == "postgresql":  # a fold under way would index events pruned here
            driver.fetch_all(conn, FOLD_SQL["postgresql"].watermark)
        plan = plan_prune(conn, retention_days, now)
        if dry_run or plan.through_seq <= plan.anchor:
            return plan
        plan.anchor_hash = conn.execute(select(audit_event.c.row_hash)
                                        .where(audit_event.c.seq == plan.through_seq)).scalar_one()
        # Anchor first: the delete triggers allow only rows at or below the highest anchor.
        conn.execute(insert(audit_anchor).values(through_seq=plan.through_seq, hash=plan.anchor_hash, pruned_ms=now))
        conn.execute(delete(audit_index).where(audit_index.c.seq <= plan.through_seq))
        plan.pruned = conn.execute(delete(audit_event).where(audit_event.c.seq <= plan.through_seq)).rowcount
        act = actor.act("delete", now,
                        details={"prune": "fhirimg audit prune", "pruned": str(plan.pruned),
                                 "through_seq": str(plan.through_seq), "anchor_hash": plan.anchor_hash,
                                 "recorded_before": format_instant(plan.cutoff_ms)})
        append_events(conn, event_rows(act, [None]))
    return plan
