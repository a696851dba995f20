"""Per subscription: status, channel, the last event numbered and delivered, the backlog, the
last error (for `fhirimg subscriptions status`, and for operators' scripts as JSON)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import orjson
from sqlalchemy import and_, select

from ..store.records import format_instant
from ..store.schema import resource_current, resource_version
from .schema import subscription_matcher, subscription_state
from .validate import channel_code


@dataclass
class SubscriptionStatus:
    id: str
    status: str
    channel: str
    endpoint_host: str  # never the path or the headers: they may hold secrets
    topic: str
    events: int
    delivered: int | None  # websocket: no acknowledgement, nothing counted
    backlog: int | None
    last_delivered: str | None
    attempts: int
    last_error: str | None
    last_error_at: str | None
    next_attempt: str | None

    def to_json(self) -> dict:
        return asdict(self)


def statuses(engine) -> tuple[list[SubscriptionStatus], int | None]:
    """Every subscription that is not deleted, and the matcher's place in the change sequence."""
    st, cur, rv = subscription_state, resource_current, resource_version
    with engine.connect() as conn:
        rows = conn.execute(
            select(st, rv.c.content).select_from(
                st.join(cur, and_(cur.c.res_type == "Subscription", cur.c.res_id == st.c.sub_id))
                .join(rv, and_(rv.c.res_type == cur.c.res_type, rv.c.res_id == cur.c.res_id,
                               rv.c.version == cur.c.version)))
            .where(cur.c.is_deleted.is_(False)).order_by(st.c.sub_id)).all()
        matcher = conn.execute(select(subscription_matcher.c.seq)).scalar()
    out = []
    for row in rows:
        sub = orjson.loads(row.content)
        channel = channel_code(sub) or "?"
        hook = channel == "rest-hook"
        out.append(SubscriptionStatus(
            row.sub_id, sub.get("status", "?"), channel, urlsplit(sub.get("endpoint") or "").hostname or "",
            (sub.get("topic") or "").rsplit("/", 1)[-1], row.events, row.delivered if hook else None,
            row.events - row.delivered if hook else None,
            format_instant(row.last_delivered_ms) if row.last_delivered_ms else None, row.attempts,
            row.last_error, format_instant(row.last_error_ms) if row.last_error_ms else None,
            format_instant(row.next_attempt_ms) if hook and row.next_attempt_ms and row.attempts else None))
    return out, matcher


def format_statuses(rows: list[SubscriptionStatus], matcher: int | None) -> str:
    lines = [f"matcher at change {matcher if matcher is not None else '(not started)'}"]
    if not rows:
        return "\n".join(lines + ["no subscriptions"])
    lines.append(f"{'SUBSCRIPTION':38} {'STATUS':9} {'CHANNEL':9} {'TOPIC':22} {'EVENTS':>7} {'DELIVERED':>9} "
                 f"{'BACKLOG':>7}  LAST ERROR")
    for r in rows:
        delivered = "-" if r.delivered is None else str(r.delivered)
        backlog = "-" if r.backlog is None else str(r.backlog)
        error = f"{r.last_error_at} {r.last_error} (attempt {r.attempts})" if r.last_error and r.attempts else ""
        lines.append(f"{r.id:38} {r.status:9} {r.channel:9} {r.topic:22} {r.events:>7} {delivered:>9} "
                     f"{backlog:>7}  {error}")
    return "\n".join(lines)
