"""``fhirimg audit status``: the trail's size, retention and forwarding at a glance.

Cheap on any size of trail: the count and head hash come from audit_head and the anchor
(not a walk of the chain: ``fhirimg audit verify`` does that), the oldest and newest times
from the recorded-time index.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select

from ..store.records import format_instant
from .chain import chain_start
from .cursors import audit_forward, export_watermark
from .fold import backlog
from .schema import audit_event, audit_head
from .senders import configured_targets


@dataclass
class TargetStatus:
    name: str
    kind: str
    cursor: int  # forwarded_through_seq
    behind: int  # events after the cursor
    failures: int
    last_error: str | None
    last_success: str | None
    next_attempt: str | None


@dataclass
class AuditStatus:
    events: int
    head_seq: int
    head_hash: str
    oldest: str | None
    newest: str | None
    retention_days: int
    export_watermark: int
    anchor_seq: int
    anchor_hash: str
    search_backlog: int = 0  # events whose search values are still to be folded in (SQLite)
    targets: list[TargetStatus] = field(default_factory=list)

    @property
    def is_failing(self) -> bool:
        return any(t.failures for t in self.targets)

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        retention = f"{self.retention_days} days" if self.retention_days else "keep for ever"
        lines = [f"chain: {self.events} events (seq {self.anchor_seq + 1}..{self.head_seq}), head {self.head_hash}",
                 f"recorded: oldest {self.oldest or '-'}, newest {self.newest or '-'}",
                 (f"retention: {retention}; export watermark seq {self.export_watermark}; "
                  f"anchor seq {self.anchor_seq} {self.anchor_hash}"),
                 f"search values: {self.search_backlog} events still to be folded in (the next search does it)"
                 if self.search_backlog else "search values: up to date"]
        for t in self.targets:
            lines.append(f"forward {t.name} ({t.kind}): through seq {t.cursor}, {t.behind} behind, "
                         f"{t.failures} failures, last success {t.last_success or 'never'}, "
                         f"next attempt {t.next_attempt or 'now'}"
                         + (f", last error: {t.last_error}" if t.last_error else ""))
        return "\n".join(lines)


def audit_status(engine, config: dict) -> AuditStatus:
    with engine.connect() as conn:
        anchor, anchor_hash = chain_start(conn)
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        oldest, newest = conn.execute(select(func.min(audit_event.c.recorded_ms),
                                             func.max(audit_event.c.recorded_ms))).one()
        status = AuditStatus(head.seq - anchor, head.seq, head.hash, _instant(oldest), _instant(newest),
                             config["audit"]["retention_days"], export_watermark(conn), anchor, anchor_hash)
        status.search_backlog = backlog(conn)
        cursors = {row.target: row for row in conn.execute(select(audit_forward)).all()}
    for target in configured_targets(config):
        row = cursors.get(target.name)
        cursor = row.forwarded_through_seq if row is not None else 0
        status.targets.append(TargetStatus(
            target.name, target.kind, cursor, max(0, head.seq - max(cursor, anchor)),
            row.failures if row is not None else 0, row.last_error if row is not None else None,
            _instant(row.last_success_ms) if row is not None else None,
            _instant(row.next_attempt_ms) if row is not None else None))
    return status


def _instant(ms: int | None) -> str | None:
    return format_instant(ms) if ms else None
