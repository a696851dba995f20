"""Turning committed changes into numbered events, one pass of the change sequence.

The matcher keeps its place in the change sequence in ``subscription_matcher`` (like a
replication link's cursor). One pass, in one write transaction: lock that row, read the
changes after it up to the visibility watermark (every lower seq is committed, so none can
appear later below it), decide for each change and each live subscription whether it is an
event, give each event the subscription's next number, and move the cursor. Crash anywhere
and the transaction is gone whole: the next pass starts from the same place, so an event
is never skipped and never numbered twice, and numbers follow change-sequence order.

A subscription hears only changes committed after the change that created it (its
``started_seq``, set when the matcher passes that change), and only what its subscriber
may read at that moment (grants.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.engine import Connection, Engine

from ..history import visible_watermark
from ..replicate.links import writing
from ..store.schema import resource_current, resource_version
from .filters import filters_of, matches
from .grants import may_read, registrations_of, subscriber
from .schema import subscription_event, subscription_matcher, subscription_state
from .topics import RESOURCE_TYPES, Change, Topic, topic_for

log = logging.getLogger("fhirimg.subscriptions")
LIVE_STATUSES = ("requested", "active", "error")
WATCHED_TYPES = tuple(sorted(RESOURCE_TYPES | {"Subscription"}))


@dataclass
class Live:
    """A subscription as the matcher uses it."""

    sub_id: str
    resource: dict
    topic: Topic
    state: object
    principal: object = None
    filters: list = field(default_factory=list)


@dataclass
class MatchReport:
    changes: int = 0
    events: int = 0
    cursor: int = 0
    caught_up: bool = False


def match_once(engine: Engine, now_ms: int, limit: int = 1000) -> MatchReport:
    """Match the next `limit` changes at most; returns what was done."""
    with engine.connect() as conn:  # a look first: SQLite's write lock only when there is work
        cursor = conn.execute(select(subscription_matcher.c.seq).where(subscription_matcher.c.id == 1)).scalar()
        if cursor is not None and visible_watermark(conn)[0] <= cursor:
            return MatchReport(cursor=int(cursor), caught_up=True)
    with writing(engine) as conn:
        cursor = lock_cursor(conn, now_ms)
        watermark, _ = visible_watermark(conn)
        report = MatchReport(cursor=cursor)
        if watermark <= cursor:
            report.caught_up = True
            return report
        changes = read_changes(conn, cursor, watermark, limit)
        last = changes[-1].seq if len(changes) == limit else watermark
        report.caught_up = last >= watermark
        live = load_live(conn, as_of=cursor) if changes else {}
        new_events: list[dict] = []
        counters: dict[str, int] = {}
        for change in changes:
            if change.res_type == "Subscription":
                apply_subscription_change(conn, change, live, counters)
                continue
            for sub in live.values():
                if is_event(conn, sub, change):
                    number = counters.get(sub.sub_id, sub.state.events) + 1
                    counters[sub.sub_id] = number
                    new_events.append({"sub_id": sub.sub_id, "number": number, "seq": change.seq,
                                       "res_type": change.res_type, "res_id": change.res_id,
                                       "version": change.version, "occurred_ms": change.last_updated_ms})
        if new_events:
            conn.execute(insert(subscription_event), new_events)
        for sub_id, number in counters.items():
            conn.execute(update(subscription_state).where(subscription_state.c.sub_id == sub_id)
                         .values(events=number))
        conn.execute(update(subscription_matcher).where(subscription_matcher.c.id == 1)
                     .values(seq=last, updated_ms=now_ms))
        report.changes, report.events, report.cursor = len(changes), len(new_events), last
        return report


def match_all(engine: Engine, now_ms: int, limit: int = 1000, max_passes: int = 100) -> MatchReport:
    total = MatchReport()
    for _ in range(max_passes):
        report = match_once(engine, now_ms, limit)
        total.changes += report.changes
        total.events += report.events
        total.cursor, total.caught_up = report.cursor, report.caught_up
        if report.caught_up:
            break
    return total


def lock_cursor(conn: Connection, now_ms: int) -> int:
    """The matcher's position, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite:
    the write lock taken at BEGIN). A new database starts at the current watermark."""
    query = select(subscription_matcher.c.seq).where(subscription_matcher.c.id == 1)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    seq = conn.execute(query).scalar()
    if seq is None:
        seq, _ = visible_watermark(conn)
        conn.execute(insert(subscription_matcher).values(id=1, seq=seq, updated_ms=now_ms))
        # Subscriptions written before the matcher's first run hear what comes after it.
        conn.execute(update(subscription_state).where(subscription_state.c.started_seq.is_(None))
                     .values(started_seq=seq))
    return int(seq)


def read_changes(conn: Connection, after: int, upto: int, limit: int) -> list[Change]:
    rv = resource_version
    rows = conn.execute(select(rv.c.seq, rv.c.res_type, rv.c.res_id, rv.c.version, rv.c.method, rv.c.content,
                               rv.c.last_updated_ms)
                        .where(rv.c.seq > after, rv.c.seq <= upto, rv.c.res_type.in_(WATCHED_TYPES))
                        .order_by(rv.c.seq).limit(limit)).all()
    previous = previous_contents(conn, [(r.res_type, r.res_id, r.version - 1) for r in rows
                                        if r.version > 1 and r.res_type != "Subscription"])
    return [Change(r.seq, r.res_type, r.res_id, r.version, r.method,
                   orjson.loads(r.content) if r.content is not None else None,
                   previous.get((r.res_type, r.res_id, r.version - 1)), r.last_updated_ms) for r in rows]


def previous_contents(conn: Connection, keys: list[tuple[str, str, int]]) -> dict:
    """The versions before some changes (None content: a delete, so the change re-creates)."""
    out: dict = {}
    rv = resource_version
    for start in range(0, len(keys), 300):
        chunk = keys[start:start + 300]
        for row in conn.execute(select(rv.c.res_type, rv.c.res_id, rv.c.version, rv.c.content)
                                .where(tuple_(rv.c.res_type, rv.c.res_id, rv.c.version).in_(chunk))):
            out[(row.res_type, row.res_id, row.version)] = orjson.loads(row.content) if row.content else None
    return out


def load_live(conn: Connection, as_of: int | None = None) -> dict[str, Live]:
    """Every subscription that may have events (requested, active or error) as it was at
    change `as_of` (the matcher's place: a change is judged by the subscription of its
    time, not of now), with its state and its subscriber (whose registration is read again
    every time). Contents are parsed once per version (``_PARSED``)."""
    cur, rv, st = resource_current, resource_version, subscription_state
    latest = conn.execute(select(func.max(rv.c.seq)).where(rv.c.res_type == "Subscription")).scalar()
    if as_of is not None and latest is not None and latest > as_of:
        versions = (select(rv.c.res_id, func.max(rv.c.version).label("version"))
                    .where(rv.c.res_type == "Subscription", rv.c.seq <= as_of).group_by(rv.c.res_id).subquery())
        rows = conn.execute(select(versions.c.res_id, versions.c.version, st)
                            .select_from(versions.join(st, st.c.sub_id == versions.c.res_id))).all()
    else:  # nothing changed since: the current versions are those of then (one indexed probe)
        rows = conn.execute(select(cur.c.res_id, cur.c.version, st)
                            .select_from(cur.join(st, st.c.sub_id == cur.c.res_id))
                            .where(cur.c.res_type == "Subscription", cur.c.is_deleted.is_(False))).all()
    parsed = parsed_versions(conn, [(row.res_id, row.version) for row in rows])
    registrations = registrations_of(conn, [row.client_id for row in rows if not row.anonymous])
    live = {}
    for row in rows:
        resource, topic, filters = parsed[(row.res_id, row.version)]
        if topic is None or resource.get("status") not in LIVE_STATUSES or row.started_seq is None:
            continue
        live[row.res_id] = Live(row.res_id, resource, topic, row, subscriber(conn, row, registrations), filters)
    return live


_PARSED: dict[tuple[str, int], tuple] = {}


def parsed_versions(conn: Connection, keys: list[tuple[str, int]]) -> dict[tuple[str, int], tuple]:
    """(content, topic, filters) of Subscription versions, parsed once per process."""
    missing = [key for key in keys if key not in _PARSED]
    rv = resource_version
    for start in range(0, len(missing), 300):
        chunk = [("Subscription", sub_id, version) for sub_id, version in missing[start:start + 300]]
        for row in conn.execute(select(rv.c.res_id, rv.c.version, rv.c.content)
                                .where(tuple_(rv.c.res_type, rv.c.res_id, rv.c.version).in_(chunk))):
            resource = orjson.loads(row.content) if row.content else {}
            _PARSED[(row.res_id, row.version)] = (resource, topic_for(resource.get("topic")), filters_of(resource))
    if len(_PARSED) > 100_000:
        _PARSED.clear()  # bounded; refilled from the next pass's rows
        return parsed_versions(conn, keys)
    return {key: _PARSED.get(key, ({}, None, [])) for key in keys}


def apply_subscription_change(conn: Connection, change: Change, live: dict[str, Live], counters: dict) -> None:
    """A Subscription version in the sequence: from here on it is what this version says. A
    new one (or one re-created after a delete) hears the changes after this one, numbered
    from 1; a deleted one, or one turned off, hears nothing more."""
    if change.resource is None:
        live.pop(change.res_id, None)
        return
    st = subscription_state
    started = conn.execute(update(st).where(st.c.sub_id == change.res_id, st.c.started_seq.is_(None))
                           .values(started_seq=change.seq)).rowcount
    if started:
        counters.pop(change.res_id, None)
    row = conn.execute(select(st).where(st.c.sub_id == change.res_id)).first()
    topic = topic_for(change.resource.get("topic"))
    if row is None or row.started_seq is None or topic is None or change.resource.get("status") not in LIVE_STATUSES:
        live.pop(change.res_id, None)
        return
    live[change.res_id] = Live(change.res_id, change.resource, topic, row, subscriber(conn, row),
                               filters_of(change.resource))


def is_event(conn: Connection, sub: Live, change: Change) -> bool:
    if change.res_type != sub.topic.resource or change.seq <= sub.state.started_seq:
        return False
    if change.interaction not in sub.topic.interactions or not sub.topic.fires(change):
        return False
    content = change.resource
    if content is not None and not matches(change.res_type, change.res_id, content, sub.filters):
        return False
    return may_read(conn, sub.principal, change.res_type, change.res_id, content)
