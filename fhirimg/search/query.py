"""A parsed search (criteria + result parameters) and the SQL for one page of it.

Paging is keyset, not OFFSET: each page continues after the sort key of the last row
of the previous one, so page 50 costs what page 1 costs, and rows written meanwhile
neither shift nor repeat what a client has already seen (search.html#paging).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select

from ..errors import Invalid, Issue
from ..requestlimits import MAX_SORT_KEYS, check_search_parameters
from ..store.schema import resource_current
from . import registry
from .criteria import (
    TOP,
    UnknownParameter,
    criterion_condition,
    date_predicate,
    split_values,
)
from .dates import MAX_MS, MIN_MS, date_range
from .tables import search_date, search_sort

RESULT_PARAMETERS = {"_format", "_pretty", "_summary", "_elements", "_count", "_sort", "_total",
                     "_include", "_revinclude", "_contained", "_containedType", "_cursor", "_type"}
SUMMARY_VALUES = ("true", "false", "text", "data", "count")
TOTAL_VALUES = ("none", "estimate", "accurate")


@dataclass
class SortKey:
    name: str
    descending: bool


@dataclass
class SearchRequest:
    res_type: str
    criteria: list[tuple[str, str]] = field(default_factory=list)  # accepted (name, value), for links
    conditions: list = field(default_factory=list)
    ignored: list[Issue] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[tuple[str, bool]] = field(default_factory=list)  # (Type:param[:target], iterate)
    revincludes: list[tuple[str, bool]] = field(default_factory=list)
    cursor: str | None = None
    # Widest span (high - low, ms) of each date parameter sorted on with a range criterion,
    # read before the page query (resolve_date_spans) so the planner sees a constant.
    date_spans: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, res_type: str, params: list[tuple[str, str]], strict: bool = False,
              base: str | None = None) -> SearchRequest:
        request = cls(res_type)
        check_search_parameters(params)
        for name, value in params:
            if name in RESULT_PARAMETERS or name.split(":", 1)[0] in ("_include", "_revinclude"):
                request._take_result_parameter(name, value)
                continue
            try:
                condition = criterion_condition(res_type, name, value, resource_current, base)
            except UnknownParameter:
                if strict:
                    raise
                request.ignored.append(Issue("not-supported", f"unknown search parameter {name!r} "
                                             f"for {res_type} was ignored", [name], "warning"))
                continue
            request.conditions.append(condition)
            request.criteria.append((name, value))
        return request

    def _take_result_parameter(self, name: str, value: str) -> None:
        if name == "_sort":
            keys = [k for k in value.split(",") if k]
            if len(keys) > MAX_SORT_KEYS:
                raise Invalid(f"_sort: {len(keys)} keys; at most {MAX_SORT_KEYS}", ["_sort"], code="too-costly")
            self.sort = [parse_sort_key(self.res_type, k) for k in keys]
        elif name == "_count":
            if not (value.isascii() and value.isdigit()):
                raise Invalid(f"_count must be a non-negative integer, got {value!r}", ["_count"])
            self.count = int(value)
        elif name == "_total":
            if value not in TOTAL_VALUES:
                raise Invalid(f"_total must be one of {', '.join(TOTAL_VALUES)}, got {value!r}", ["_total"])
            self.total = value
        elif name == "_summary":
            if value not in SUMMARY_VALUES:
                raise Invalid(f"_summary must be one of {', '.join(SUMMARY_VALUES)}, got {value!r}", ["_summary"])
            self.summary = value
        elif name == "_elements":
            self.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif name.startswith(("_include", "_revinclude")):
            self._take_include(name, value)
        elif name == "_cursor":
            self.cursor = value
        elif name in ("_contained", "_containedType"):
            raise Invalid(f"{name} is not supported: this server does not search contained resources", [name])

    def _take_include(self, name: str, value: str) -> None:
        base_name, _, modifier = name.partition(":")
        if modifier not in ("", "iterate", "recurse"):
            raise Invalid(f"{name}: unknown modifier :{modifier} (use :iterate)", [name])
        iterate = modifier in ("iterate", "recurse")
        check_include(value, base_name, self.res_type, iterate)
        (self.includes if base_name == "_include" else self.revincludes).append((value, iterate))

    def canonical(self) -> str:
        """What a cursor is bound to: the same criteria and sort, in order."""
        sort = ",".join(("-" if k.descending else "") + k.name for k in self.sort)
        return self.res_type + "?" + "&".join(f"{n}={v}" for n, v in self.criteria) + "#" + sort


def parse_sort_key(res_type: str, text: str) -> SortKey:
    descending = text.startswith("-")
    name = text[1:] if descending else text
    param = registry.parameter(res_type, name)
    if param is None or not param.is_sortable:
        raise Invalid(f"_sort: {res_type} cannot be sorted by {name!r} (sortable: "
                      f"{', '.join(p.name for p in registry.parameters_for(res_type) if p.is_sortable)})",
                      ["_sort"])
    return SortKey(name, descending)


def check_include(value: str, kind: str, res_type: str, iterate: bool) -> None:
    if value == "*":
        return
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise Invalid(f"{kind}={value}: expected Type:parameter[:targetType]", [kind])
    source, param_name = parts[0], parts[1]
    param = registry.parameter(source, param_name)
    if param is None or param.type != "reference":
        raise Invalid(f"{kind}={value}: {source} has no reference search parameter {param_name!r}", [kind])
    if kind == "_include" and source != res_type and not iterate:
        raise Invalid(f"_include={value}: the source type must be {res_type} (or use _include:iterate)", [kind])


# -- the page query --------------------------------------------------------------------
def sort_columns(request: SearchRequest):
    """The page query without its order: (query, [(column, descending)]) ending with an id tie-break.

    A date parameter is sorted on its search_date row (every date parameter of the
    supported types has at most one value) and a plain date criterion on the same
    parameter is applied to that row, so `started=ge..&_sort=-started` is one range scan
    of ix_search_date_high in index order that stops after a page.
    """
    cur = resource_current
    positive = {split_name(n) for n, _ in request.criteria if ":missing" not in n and ":not" not in n}
    columns, absorbed, joins, tie = [], set(), [], cur.c.res_id
    for key in request.sort:
        if key.name == "_id":
            columns.append((cur.c.res_id, key.descending))
            continue
        if key.name == "_lastUpdated":
            columns.append((cur.c.last_updated_ms, key.descending))
            continue
        param = registry.parameter(request.res_type, key.name)
        inner = key.name in positive
        if param.type == "date":
            sort = search_date.alias(f"sort_{len(columns)}")
            column = sort.c.high_ms if key.descending else sort.c.low_ms
            if inner:
                absorbed |= _absorb_date_criteria(request, key.name, sort, joins)
            missing = MIN_MS - 1 if key.descending else MAX_MS + 1
        else:
            sort = search_sort.alias(f"sort_{len(columns)}")
            column = sort.c.desc_key if key.descending else sort.c.asc_key
            missing = "" if key.descending else TOP
        on = and_(sort.c.res_type == cur.c.res_type, sort.c.res_id == cur.c.res_id, sort.c.param == key.name)
        if inner:  # every match has a value: a plain join keeps the index order usable
            joins.insert(0, ("inner", sort, on))
            if len(columns) == 0:
                tie = sort.c.res_id
        else:  # resources without a value sort last either way
            joins.insert(0, ("outer", sort, on))
            column = func.coalesce(column, missing)
        columns.append((column, key.descending))
    if not any(c is cur.c.res_id for c, _ in columns):
        columns.append((tie, columns[-1][1] if columns else False))
    query = select(cur.c.res_id).select_from(cur)
    for kind, table, on in [j for j in joins if len(j) == 3]:
        query = query.join(table, on) if kind == "inner" else query.outerjoin(table, on)
    conditions = [c for i, c in enumerate(request.conditions) if i not in absorbed]
    extra = [j[0] for j in joins if len(j) == 1]
    query = query.where(cur.c.res_type == request.res_type, cur.c.is_deleted.is_(False), *conditions, *extra)
    return query, columns


def _absorb_date_criteria(request: SearchRequest, name: str, sort, joins: list) -> set[int]:
    absorbed = set()
    for i, (criterion, value) in enumerate(request.criteria):
        if criterion == name:
            values = split_values(value)
            preds = [date_predicate(v, name, sort.c.low_ms, sort.c.high_ms) for v in values]
            joins.append((or_(*preds),))
            if len(values) == 1:
                joins += [(bound,) for bound in derived_bounds(request.res_type, name, values[0], sort,
                                                               request.date_spans.get(name))]
            absorbed.add(i)
    return absorbed


def widest_span_query(res_type: str, name: str):
    """ORDER BY .. LIMIT 1 over ix_search_date_span: one index seek."""
    d = search_date.alias("span")
    width = d.c.high_ms - d.c.low_ms
    return select(width).where(d.c.res_type == res_type, d.c.param == name).order_by(width.desc()).limit(1)


def resolve_date_spans(conn, request: SearchRequest) -> None:
    """Read the widest spans derived_bounds needs, as constants for the page query.

    As a subquery the span is unknown to PostgreSQL's planner, which then guessed 13 rows
    for a quarter of `started` at 1 000 000 studies (30 000 in fact), sorted them all and
    took 1 000 ms for `modality=CT&started=ge..&started=lt..&_sort=-started`; with the
    constant it walks ix_search_date_high in order and stops after a page (5 ms).
    """
    sorted_dates = {k.name for k in request.sort}
    for name, _ in request.criteria:
        if name in sorted_dates and name not in request.date_spans:
            param = registry.parameter(request.res_type, name)
            if param is not None and param.type == "date":
                request.date_spans[name] = conn.execute(widest_span_query(request.res_type, name)).scalar() or 0


def derived_bounds(res_type: str, name: str, value: str, sort, span: int | None = None) -> list:
    """Redundant bounds on the other end of the ranges: low <= high <= low + widest span.

    `started=lt2023-04-01` bounds `low`; sorted by `high` the index scan also needs a bound
    on `high`, which is `high < 2023-04-01 + widest span of started` (one index seek).
    `span` is that widest span if the caller has read it (resolve_date_spans), else a subquery.
    """
    prefix = value[:2] if value[:2].isalpha() else "eq"
    vl, vh = date_range(value[2:] if value[:2].isalpha() else value)
    if span is None:
        span = func.coalesce(widest_span_query(res_type, name).scalar_subquery(), 0)
    if prefix == "lt":
        return [sort.c.high_ms < vl + span]
    if prefix == "le":
        return [sort.c.high_ms <= vh + span]
    if prefix == "gt":
        return [sort.c.low_ms > vh - span]
    if prefix == "ge":
        return [sort.c.low_ms >= vl - span]
    if prefix == "sa":
        return [sort.c.high_ms > vh]
    if prefix == "eb":
        return [sort.c.low_ms < vl]
    return []


def split_name(name: str) -> str:
    return name.split(":", 1)[0].split(".", 1)[0]


def base_query(request: SearchRequest):
    cur = resource_current
    return select(cur.c.res_id).select_from(cur).where(
        cur.c.res_type == request.res_type, cur.c.is_deleted.is_(False), *request.conditions)


def page_query(request: SearchRequest, after: list | None, backwards: bool, limit: int):
    """Ids (and sort values) of one page: rows after `after` in sort order (before it if backwards)."""
    query, columns = sort_columns(request)
    query = query.add_columns(*[c.label(f"k{i}") for i, (c, _) in enumerate(columns)])
    if after is not None:
        if len(after) != len(columns):
            raise Invalid("the paging cursor does not belong to this search", ["_cursor"])
        query = query.where(keyset_after(columns, after, backwards))
    order = []
    for column, descending in columns:
        descending = descending != backwards
        order.append(column.desc() if descending else column.asc())
    return query.order_by(*order).limit(limit), len(columns)


def keyset_after(columns, values: list, backwards: bool):
    """(k1, k2, ...) strictly after `values` in the order of `columns` (row-value comparison, expanded)."""
    branches = []
    for i, (column, descending) in enumerate(columns):
        go_down = descending != backwards
        step = column < values[i] if go_down else column > values[i]
        equal = [columns[j][0] == values[j] for j in range(i)]
        branches.append(and_(*equal, step))
    return or_(*branches)


def count_query(request: SearchRequest):
    return select(func.count()).select_from(base_query(request).subquery())


__all__ = ["SearchRequest", "count_query", "matching_ids", "page_query", "resolve_date_spans", "split_values"]


def matching_ids(conn, request: SearchRequest, limit: int) -> list[str]:
    """All ids (up to `limit`) matching a request's criteria, in id order (conditional operations)."""
    query = base_query(request).order_by(resource_current.c.res_id).limit(limit)
    return [row.res_id for row in conn.execute(query)]
