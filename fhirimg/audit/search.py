"""Searching the audit trail: the R5 AuditEvent search parameters over ``audit_index``.

Values of one parameter separated by commas are OR, repeated parameters AND
(search.html#combining). Pages walk ``seq`` (commit order) with an opaque cursor, oldest
first or, with ``_sort=-date``, newest first; new events never shift a page.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from sqlalchemy import and_, exists, or_, select

from ..errors import Invalid
from ..requestlimits import check_search_parameters
from ..search.criteria import date_predicate, split_values
from ..search.cursor import decode_cursor, encode_cursor
from ..store.records import format_instant
from .schema import audit_event, audit_index

TOKENS = {"action", "agent-role", "category", "code", "entity-role", "outcome", "purpose"}
REFERENCES = {"agent", "entity", "patient", "source"}
URIS = {"policy"}
DATES = {"date", "_lastUpdated"}
PARAMETERS = TOKENS | REFERENCES | URIS | DATES | {"_id"}
RESULT = {"_count", "_sort", "_cursor", "_total", "_format", "_pretty"}
MODIFIERS = {"agent": {"identifier"}, "entity": {"identifier"}, "source": {"identifier"}}
MAX_VALUES = 100  # per parameter: one probe each


@dataclass
class AuditQuery:
    conditions: list = field(default_factory=list)
    count: int = 20
    newest_first: bool = False
    cursor: str | None = None
    canonical: str = ""
    total: bool = False
    uses_index: bool = False  # a condition reads audit_index (SQLite: fold first, audit/fold.py)


def parse_query(params: list[tuple[str, str]], default_count: int, max_count: int, base: str) -> AuditQuery:
    check_search_parameters(params)
    query = AuditQuery(count=default_count)
    kept = []
    for name, value in params:
        code, _, modifier = name.partition(":")
        if code in RESULT:
            apply_result_parameter(query, code, value, max_count)
            continue
        if code not in PARAMETERS:
            raise Invalid(f"unknown AuditEvent search parameter {name!r} (known: {', '.join(sorted(PARAMETERS))})",
                          [name])
        if modifier and modifier not in MODIFIERS.get(code, ()):
            raise Invalid(f"modifier :{modifier} is not supported on {code}", [name])
        values = split_values(value)
        if not values or len(values) > MAX_VALUES or not all(values):
            raise Invalid(f"{name} needs 1 to {MAX_VALUES} non-empty values", [name])
        query.conditions.append(or_(*[condition(code, modifier, v, name, base) for v in values]))
        query.uses_index = query.uses_index or code not in DATES | {"_id"}
        kept.append((name, value))
    query.canonical = orjson.dumps(sorted(kept) + [("_sort", query.newest_first)]).decode()
    return query


def apply_result_parameter(query: AuditQuery, code: str, value: str, max_count: int) -> None:
    if code == "_count":
        if not (value.isascii() and value.isdigit()):
            raise Invalid(f"_count must be a non-negative integer, got {value!r}", ["_count"])
        query.count = min(int(value), max_count)
    elif code == "_sort":
        if value not in ("date", "-date", "_lastUpdated", "-_lastUpdated"):
            raise Invalid("AuditEvent is sorted by date or -date only", ["_sort"])
        query.newest_first = value.startswith("-")
    elif code == "_cursor":
        query.cursor = value
    elif code == "_total":
        query.total = value == "accurate"


def condition(code: str, modifier: str, value: str, name: str, base: str):
    event = audit_event
    if code in DATES:
        return date_predicate(value, name, event.c.recorded_ms, event.c.recorded_ms)
    if code == "_id":
        return event.c.seq == int(value) if value.isascii() and value.isdigit() else event.c.seq == -1
    if code in TOKENS or modifier == "identifier":
        return token_condition(code, value)
    if code in URIS:
        return indexed(code, value, audit_index.c.system.is_(None))
    return reference_condition(code, value, base)


def token_condition(code: str, value: str):
    """``code`` (any system), ``system|code``, ``|code`` (no system)."""
    if "|" not in value:
        return indexed(code, value)
    system, _, value = value.partition("|")
    return indexed(code, value, audit_index.c.system == system)


def reference_condition(code: str, value: str, base: str):
    if value.startswith(base + "/"):
        value = value[len(base) + 1:]
    if "/" in value:
        return indexed(code, value, audit_index.c.system.is_(None))
    if code == "patient":
        return indexed(code, f"Patient/{value}", audit_index.c.system.is_(None))
    # agent=pacs-bridge, source=<site>: an id-less value names the client or site by identifier
    return indexed(code, value)


def indexed(param: str, value: str, *extra):
    ix = audit_index
    return exists(select(ix.c.seq).where(ix.c.seq == audit_event.c.seq, ix.c.param == param, ix.c.value == value,
                                         *extra))


def run_query(conn, query: AuditQuery, reach) -> tuple[list, str | None, int | None]:
    """(rows of this page, the next page's cursor or None, total or None). `reach` is the access
    condition on audit_event (None: every event)."""
    event = audit_event
    where = list(query.conditions) + ([reach] if reach is not None else [])
    order = event.c.seq.desc() if query.newest_first else event.c.seq.asc()
    page = select(event.c.seq, event.c.recorded_ms, event.c.event).where(*where)
    if query.cursor:
        after = decode_cursor(query.cursor, query.canonical)["k"][0]
        page = page.where(event.c.seq < after if query.newest_first else event.c.seq > after)
    rows = conn.execute(page.order_by(order).limit(query.count + 1)).all()
    following = None
    if len(rows) > query.count:
        rows = rows[:query.count]
        following = encode_cursor(query.canonical, [rows[-1].seq]) if rows else None
    total = None
    if query.total or (not query.cursor and following is None):
        from sqlalchemy import func
        total = conn.execute(select(func.count()).select_from(event).where(*where)).scalar() \
            if following is not None or query.cursor else len(rows)
    return rows, following, total


def as_resource(seq: int, recorded_ms: int, event_json: str) -> dict:
    """The stored event as the FHIR resource a client reads: id = its place in the chain."""
    event = orjson.loads(event_json)
    return {"resourceType": "AuditEvent", "id": str(seq),
            "meta": {"versionId": "1", "lastUpdated": format_instant(recorded_ms)},
            **{k: v for k, v in event.items() if k != "resourceType"}}


def patient_condition(patients):
    """Events about these patients (a list of ids or a SELECT of them)."""
    return and_(audit_event.c.patient.is_not(None), audit_event.c.patient.in_(patients))
