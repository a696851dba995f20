"""History (http.html#history) as snapshot pages over the change sequence.

Every version has a ``seq`` from one strictly increasing sequence, taken at commit under
the change counter's row lock, so the versions any reader can see are always a prefix
of the sequence: the *watermark* (the counter's committed value) is the highest seq
below which every transaction has committed. A page is therefore fully described by
seq bounds:

* the first page of a history fixes ``hi`` = the watermark; every later page of that
  history keeps it, so writes that commit while a client pages never shift, repeat or
  hide entries (a snapshot, like Blaze's "t");
* pages continue from the last seq returned (keyset, not offset), so page 100 costs what
  page 1 costs and entries that share a lastUpdated are neither repeated nor skipped;
* the *poll cursor* of every page is "after ``hi``": a poller that stores it asks next
  time for exactly the changes committed after its snapshot, late-committing
  transactions included, because they get their seq when they commit.

Bounds travel in an opaque ``_cursor`` parameter; ``_since`` and ``_at`` are turned into
seq bounds through the (lastUpdated, seq) index, which is sound because lastUpdated
never decreases along the sequence (it is stamped under the same lock).
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from .errors import Invalid, NotFound
from .replicate.schema import change_origin
from .resources import REPLICATED_BY_DEFAULT, SUPPORTED_TYPES
from .store.records import StoredVersion
from .store.repository import row_to_version
from .store.schema import change_counter, resource_current, resource_version

CURSOR_VERSION = 1
# http.html#history: the parameters a history interaction understands.
HISTORY_PARAMETERS = {"_count", "_since", "_at", "_sort", "_list", "_cursor", "_type", "_total"}
FORMAT_PARAMETERS = {"_format", "_pretty", "_summary", "_elements"}
SORTS = {"-_lastUpdated": False, "_lastUpdated": True, "none": True}

_INSTANT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


@dataclass(frozen=True)
class Cursor:
    """Where a history page starts, in change-sequence terms.

    ``lo``: only changes after this seq. ``hi``: only changes up to this seq (the
    snapshot); None means "take a new snapshot" (a poll cursor). ``pos``: the seq of the
    last entry already returned in this snapshot. ``ascending``: the page order.
    """

    lo: int = 0
    hi: int | None = None
    pos: int | None = None
    ascending: bool = False

    def encode(self) -> str:
        raw = orjson.dumps([CURSOR_VERSION, self.lo, self.hi, self.pos, int(self.ascending)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, lo, hi, pos, ascending = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
            raise Invalid(f"_cursor {text[:80]!r} is not a cursor this server issued", ["_cursor"]) from None
        numbers = [lo] + [n for n in (hi, pos) if n is not None]
        if version != CURSOR_VERSION or not all(isinstance(n, int) and n >= 0 for n in numbers) \
                or ascending not in (0, 1):
            raise Invalid(f"_cursor {text[:80]!r} is not a cursor this server issued", ["_cursor"])
        return cls(lo, hi, pos, bool(ascending))


@dataclass
class HistoryQuery:
    """What a history request asks for, parsed and checked."""

    res_type: str | None = None
    res_id: str | None = None
    types: tuple[str, ...] = ()  # _type, system level only
    since_ms: int | None = None  # inclusive (http.html#history: "at or after")
    at: tuple[int, int] | None = None  # [start, end) in ms
    count: int = 20
    ascending: bool = False
    cursor: Cursor | None = None
    want_total: bool = False
    ignored: list[str] = field(default_factory=list)


@dataclass
class HistoryEntry:
    version: StoredVersion
    status: str  # Bundle.entry.response.status
    origin: str | None  # site id of the site that first wrote it; None = written here


@dataclass
class HistoryPage:
    entries: list[HistoryEntry]
    watermark: int  # the snapshot: highest seq this history can show
    watermark_ms: int  # its lastUpdated: every later change has lastUpdated >= this
    next_cursor: Cursor | None
    poll_cursor: Cursor
    total: int | None = None


# -- parsing ------------------------------------------------------------------------------

def parse_history_query(params: list[tuple[str, str]], res_type: str | None, res_id: str | None,
                        default_count: int, max_count: int) -> HistoryQuery:
    """Check and convert the query parameters of a history request; 400 names the bad one."""
    query = HistoryQuery(res_type=res_type, res_id=res_id, count=default_count)
    seen: set[str] = set()
    for name, value in params:
        if name in HISTORY_PARAMETERS and name in seen:
            raise Invalid(f"{name} may be given only once", [name])
        seen.add(name)
        if name == "_since":
            query.since_ms = parse_since(value)
        elif name == "_at":
            query.at = parse_period(value, "_at")
        elif name == "_count":
            query.count = parse_count(value, max_count)
        elif name == "_sort":
            if value not in SORTS:
                raise Invalid(f"_sort {value!r} is not allowed on history: use _lastUpdated (oldest first), "
                              "-_lastUpdated (newest first, the default) or none", ["_sort"])
            query.ascending = SORTS[value]
        elif name == "_cursor":
            query.cursor = Cursor.decode(value)
        elif name == "_type":
            query.types = parse_types(value, res_type)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise Invalid(f"_total {value!r} must be none, estimate or accurate", ["_total"])
            query.want_total = value != "none"
        elif name == "_list":
            raise Invalid("_list is not supported on history", ["_list"], code="not-supported")
        elif name not in FORMAT_PARAMETERS:
            query.ignored.append(name)
    if query.cursor is not None and "_sort" in seen and query.cursor.ascending != query.ascending:
        raise Invalid("_sort differs from the order of the _cursor it continues", ["_sort"])
    if query.cursor is not None:
        query.ascending = query.cursor.ascending
    return query


def parse_count(value: str, max_count: int) -> int:
    if not (value.isascii() and value.isdigit()):
        raise Invalid(f"_count must be a non-negative integer, got {value!r}", ["_count"])
    return min(int(value), max_count)


def parse_types(value: str, res_type: str | None) -> tuple[str, ...]:
    if res_type is not None:
        raise Invalid("_type is only allowed on the system history [base]/_history", ["_type"])
    types = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in types if t not in SUPPORTED_TYPES]
    if not types or unknown:
        raise Invalid(f"_type names unsupported types {', '.join(unknown) or '(none)'} "
                      f"(supported: {', '.join(SUPPORTED_TYPES)})", ["_type"])
    return types


def parse_since(value: str) -> int:
    """``_since`` (an instant; a date means its first moment, UTC) as epoch ms, rounded up.

    Rounding up keeps "at or after" exact: lastUpdated is stored in whole milliseconds.
    """
    start, _end, nanos = _parse_instant_or_date(value, "_since")
    ms, rest = divmod(nanos, 1_000_000)
    return start + ms + (1 if rest else 0)


def parse_period(value: str, name: str) -> tuple[int, int]:
    """A date or dateTime as the period it stands for, [start, end) in ms (search.html#date)."""
    start, end, nanos = _parse_instant_or_date(value, name)
    return start + nanos // 1_000_000, end


def _parse_instant_or_date(value: str, name: str) -> tuple[int, int, int]:
    """(start ms of the second or date, end ms of the period, nanoseconds within the second)."""
    text = _restore_plus(value.strip())
    match = _INSTANT.match(text)
    try:
        if match:
            year, month, day, hour, minute, second, fraction, zone = match.groups()
            tz = timezone.utc if zone == "Z" else _offset(zone)
            moment = datetime(int(year), int(month), int(day), int(hour), int(minute),
                              min(int(second), 59), tzinfo=tz)
            start = int(moment.timestamp()) * 1000
            nanos = int((fraction or "").ljust(9, "0")) if fraction else 0
            precision_ns = 10 ** (9 - len(fraction)) if fraction else 1_000_000_000
            end = start + (nanos + precision_ns + 999_999) // 1_000_000
            return start, end, nanos
        match = _DATE.match(text)
        if match:
            year, month, day = match.groups()
            first = datetime(int(year), int(month or 1), int(day or 1), tzinfo=timezone.utc)
            if day:
                last = first + timedelta(days=1)
            elif month:
                last = first.replace(year=first.year + (first.month == 12), month=first.month % 12 + 1)
            else:
                last = first.replace(year=first.year + 1)
            return int(first.timestamp()) * 1000, int(last.timestamp()) * 1000, 0
    except ValueError:
        pass
    raise Invalid(f"{name} {value!r} is not a valid instant: expected e.g. 2026-11-23T09:40:00Z, "
                  "2026-11-23T09:40:00.123+01:00 or a date 2026-11-23", [name])


def _restore_plus(text: str) -> str:
    # An unencoded "+01:00" arrives as " 01:00" (form decoding); nothing else has a space there.
    return re.sub(r"(T\d{2}:\d{2}:\d{2}(?:\.\d+)?) (\d{2}:\d{2})$", r"\1+\2", text)


def _offset(zone: str) -> timezone:
    sign = 1 if zone[0] == "+" else -1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(zone)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


# -- reading ------------------------------------------------------------------------------

def visible_watermark(conn: Connection) -> tuple[int, int]:
    """(seq, lastUpdated ms) of the last committed change: every lower seq is committed too."""
    row = conn.execute(select(change_counter.c.value, change_counter.c.last_ms)
                       .where(change_counter.c.id == 1)).first()
    return (int(row.value), int(row.last_ms)) if row else (0, 0)


def first_seq_at_or_after(conn: Connection, ms: int) -> int | None:
    """The first seq whose lastUpdated >= ms (one probe of the (lastUpdated, seq) index)."""
    rv = resource_version
    return conn.execute(select(rv.c.seq).where(rv.c.last_updated_ms >= ms)
                        .order_by(rv.c.last_updated_ms, rv.c.seq).limit(1)).scalar()


def updated_ms_of(conn: Connection, seq: int) -> int:
    rv = resource_version
    found = conn.execute(select(rv.c.last_updated_ms).where(rv.c.seq <= seq)
                         .order_by(rv.c.seq.desc()).limit(1)).scalar()
    return int(found or 0)


def read_history(conn: Connection, query: HistoryQuery) -> HistoryPage:
    """One page of history for `query`, all inside the snapshot its cursor names."""
    current, current_ms = visible_watermark(conn)
    cursor = query.cursor or Cursor(ascending=query.ascending)
    check_cursor(cursor, current)
    if query.res_id is not None:
        check_resource_exists(conn, query.res_type, query.res_id)
    hi = cursor.hi if cursor.hi is not None else current
    hi_ms = current_ms if hi == current else updated_ms_of(conn, hi)
    lo, top = seq_bounds(conn, query, cursor.lo, hi)
    rows = select_versions(conn, query, lo, top, cursor.pos, query.count + 1) if query.count else []
    has_more = len(rows) > query.count
    entries = [history_entry(row) for row in rows[:query.count]]
    next_cursor = (Cursor(lo, hi, entries[-1].version.seq, query.ascending) if has_more and entries else None)
    total = count_versions(conn, query, lo, top) if query.want_total or query.res_id is not None else None
    return HistoryPage(entries, hi, hi_ms, next_cursor, Cursor(hi, None, None, query.ascending), total)


def check_cursor(cursor: Cursor, current: int) -> None:
    beyond = max(cursor.lo, cursor.hi or 0)
    if beyond > current:
        raise Invalid(f"_cursor refers to change {beyond} but this server's changes end at {current}: "
                      "its database was replaced or restored; start again with _since", ["_cursor"])


def check_resource_exists(conn: Connection, res_type: str, res_id: str) -> None:
    cur = resource_current
    if conn.execute(select(cur.c.version).where(cur.c.res_type == res_type, cur.c.res_id == res_id)).first() is None:
        raise NotFound(f"{res_type}/{res_id} is not known")


def seq_bounds(conn: Connection, query: HistoryQuery, lo: int, hi: int) -> tuple[int, int]:
    """The cursor's bounds narrowed by _since and _at: changes in (lo, hi]."""
    if query.since_ms is not None:
        first = first_seq_at_or_after(conn, query.since_ms)
        lo = max(lo, (first - 1) if first is not None else hi)
    if query.at is not None:
        after_end = first_seq_at_or_after(conn, query.at[1])
        if after_end is not None:
            hi = min(hi, after_end - 1)
    return lo, hi


def _filters(query: HistoryQuery, rv, lo: int, hi: int) -> list:
    conditions = [rv.c.seq > lo, rv.c.seq <= hi]
    if query.res_type is not None:
        conditions.append(rv.c.res_type == query.res_type)
    if query.res_id is not None:
        conditions.append(rv.c.res_id == query.res_id)
    if query.types:
        conditions.append(rv.c.res_type.in_(query.types))
    elif query.res_type is None:
        # System history without _type: the shared record, not the Subscriptions, which are
        # their clients' own (and carry their endpoints' headers); _type=Subscription asks.
        conditions.append(rv.c.res_type.in_(REPLICATED_BY_DEFAULT))
    return conditions


def _at_condition(query: HistoryQuery, rv, hi: int):
    """Versions current at some point of the _at period: made before its end, replaced after its start."""
    nxt = resource_version.alias("nxt")
    replaced = (select(func.min(nxt.c.last_updated_ms))
                .where(nxt.c.res_type == rv.c.res_type, nxt.c.res_id == rv.c.res_id,
                       nxt.c.version == rv.c.version + 1, nxt.c.seq <= hi).scalar_subquery())
    return (replaced.is_(None)) | (replaced > query.at[0])


def select_versions(conn: Connection, query: HistoryQuery, lo: int, hi: int, pos: int | None, limit: int):
    """The page's versions. The seqs are chosen first on resource_version alone (an index
    range scan that stops after `limit`), then joined: a planner misled by stale statistics
    can then at worst sort integers, never every row's content."""
    rv = resource_version
    conditions = _filters(query, rv, lo, hi)
    if pos is not None:
        conditions.append(rv.c.seq > pos if query.ascending else rv.c.seq < pos)
    if query.at is not None:
        conditions.append(_at_condition(query, rv, hi))
    order = rv.c.seq.asc() if query.ascending else rv.c.seq.desc()
    page = select(rv.c.seq).where(*conditions).order_by(order).limit(limit).subquery("page")
    version = resource_version.alias("v")
    prev = resource_version.alias("prev")
    stmt = (select(version, prev.c.is_deleted.label("prev_deleted"), change_origin.c.origin)
            .select_from(page.join(version, version.c.seq == page.c.seq)
                         .outerjoin(prev, and_(prev.c.res_type == version.c.res_type,
                                               prev.c.res_id == version.c.res_id,
                                               prev.c.version == version.c.version - 1))
                         .outerjoin(change_origin, change_origin.c.seq == version.c.seq))
            .order_by(version.c.seq.asc() if query.ascending else version.c.seq.desc()))
    return conn.execute(stmt).all()


def count_versions(conn: Connection, query: HistoryQuery, lo: int, hi: int) -> int:
    rv = resource_version
    conditions = _filters(query, rv, lo, hi)
    if query.at is not None:
        conditions.append(_at_condition(query, rv, hi))
    return int(conn.execute(select(func.count()).select_from(rv).where(*conditions)).scalar() or 0)


def history_entry(row) -> HistoryEntry:
    version = row_to_version(row)
    return HistoryEntry(version, response_status(version, row.prev_deleted), row.origin)


def response_status(version: StoredVersion, prev_deleted: bool | None) -> str:
    """The status the write that made this version answered with (http.html#history)."""
    if version.is_deleted:
        return "200 OK"
    if version.version == 1 or prev_deleted:
        return "201 Created"
    return "200 OK"
