"""Run a parsed search on one unit of work and build the searchset Bundle (search.html, bundle.html)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

from sqlalchemy import select, text

from ..errors import Issue, outcome_entry
from ..store.repository import UnitOfWork
from . import registry
from .cursor import decode_cursor, encode_cursor
from .query import SearchRequest, count_query, page_query, resolve_date_spans
from .shaping import shape_resource
from .tables import search_reference

MAX_INCLUDED = 1000
MAX_ITERATIONS = 4


@dataclass
class SearchContext:
    base: str  # the FHIR base URL, for fullUrl and links
    default_count: int
    max_count: int
    # (conn, type, ids) -> the ids that may be shown as included resources (access control);
    # None shows all of them.
    visible: Callable | None = None


@dataclass
class Page:
    ids: list[str]
    keys: list[list]
    has_more: bool


def run_search(uow: UnitOfWork, request: SearchRequest, ctx: SearchContext) -> dict:
    count = min(request.count if request.count is not None else ctx.default_count, ctx.max_count)
    cursor = decode_cursor(request.cursor, request.canonical()) if request.cursor else None
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if request.summary == "count" or count == 0:
        bundle["total"] = uow.conn.execute(count_query(request)).scalar_one()
        bundle["link"] = [_link("self", ctx, request, None, count)]
        return _with_outcome(bundle, request, [])
    page = fetch_page(uow, request, cursor, count)
    total = page_total(uow, request, page, cursor)
    if total is not None:
        bundle["total"] = total
    bundle["link"] = page_links(ctx, request, page, cursor, count)
    found = uow.read_many(request.res_type, page.ids)
    matches = [found[i] for i in page.ids if i in found]
    entries = [_entry(ctx, s.resource, "match", request) for s in matches]
    included, notes = collect_included(uow, request, matches, ctx.visible)
    entries += [_entry(ctx, s.resource, "include", request) for s in included]
    bundle["entry"] = entries
    return _with_outcome(bundle, request, notes)


def fetch_page(uow: UnitOfWork, request: SearchRequest, cursor: dict | None, count: int) -> Page:
    after = cursor["k"] if cursor else None
    backwards = bool(cursor and cursor.get("b"))
    resolve_date_spans(uow.conn, request)
    query, width = page_query(request, after, backwards, count + 1)
    rows = None
    if uow.conn.dialect.name == "postgresql" and walks_a_date_range(request):
        rows = ordered_walk(uow.conn, query)
    if rows is None:
        rows = [tuple(r) for r in uow.conn.execute(query)]
    has_more = len(rows) > count
    rows = rows[:count]
    if backwards:
        rows.reverse()
    return Page([r[0] for r in rows], [list(r[1:1 + width]) for r in rows], has_more)


# How long a page may try to walk a date index in order before the planner's own plan runs.
ORDERED_WALK_BUDGET_MS = 40


def walks_a_date_range(request: SearchRequest) -> bool:
    """The first sort key is a date parameter that also has a range criterion."""
    return bool(request.sort) and request.sort[0].name in request.date_spans


def ordered_walk(conn, query) -> list[tuple] | None:
    """The page by walking the sorted date's index in order, or None if that is slow.

    `modality=CT&started=ge..&started=lt..&_sort=-started` at 1 000 000 studies: the planner
    cannot know that a third of the quarter's 30 000 studies are CT (the token statistics
    cover every parameter at once), expects 7 matches, reads all 30 000 and sorts: 1 000 ms.
    Walking ix_search_date_high backwards stops after a page: 5 ms. When another criterion
    is the selective one (a patient's few studies over ten years) the walk would be the slow
    plan, so it gets a budget and the planner's plan runs after it, in a savepoint rolled
    back on the timeout.
    """
    from sqlalchemy.exc import OperationalError
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ORDERED_WALK_BUDGET_MS}")
        rows = [tuple(r) for r in conn.execute(query)]
        conn.exec_driver_sql("RESET enable_sort")
        conn.exec_driver_sql("RESET statement_timeout")
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "57014":  # query_canceled
            savepoint.rollback()
            raise
        savepoint.rollback()
        return None
    savepoint.commit()
    return rows


def page_total(uow, request: SearchRequest, page: Page, cursor: dict | None) -> int | None:
    """_total=accurate counts; estimate uses PostgreSQL's planner estimate; by default the
    total is given only when this page shows it for free (a single, complete page)."""
    if request.total == "accurate":
        return uow.conn.execute(count_query(request)).scalar_one()
    if request.total == "estimate":
        if uow.conn.dialect.name == "postgresql":
            compiled = count_query(request).subquery().element.compile(
                uow.conn, compile_kwargs={"literal_binds": True})
            plan = uow.conn.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar_one()
            plan = plan if isinstance(plan, list) else __import__("json").loads(plan)
            return int(plan[0]["Plan"].get("Plan Rows", 0))
        return uow.conn.execute(count_query(request)).scalar_one()
    if request.total == "none":
        return None
    if cursor is None and not page.has_more:
        return len(page.ids)
    return None


def page_links(ctx: SearchContext, request: SearchRequest, page: Page, cursor: dict | None, count: int) -> list:
    canonical = request.canonical()
    backwards = bool(cursor and cursor.get("b"))
    links = [_link("self", ctx, request, request.cursor, count), _link("first", ctx, request, None, count)]
    if page.ids and (page.has_more if not backwards else True):
        links.append(_link("next", ctx, request, encode_cursor(canonical, page.keys[-1]), count))
    if page.ids and (cursor is not None) and (page.has_more if backwards else True):
        links.append(_link("previous", ctx, request, encode_cursor(canonical, page.keys[0], True), count))
    return links


def _link(relation: str, ctx: SearchContext, request: SearchRequest, cursor: str | None, count: int) -> dict:
    params = list(request.criteria) + result_parameters(request) + [("_count", str(count))]
    if cursor:
        params.append(("_cursor", cursor))
    return {"relation": relation, "url": f"{ctx.base}/{request.res_type}?{urlencode(params)}"}


def result_parameters(request: SearchRequest) -> list[tuple[str, str]]:
    out = []
    if request.sort:
        out.append(("_sort", ",".join(("-" if k.descending else "") + k.name for k in request.sort)))
    for value, iterate in request.includes:
        out.append(("_include:iterate" if iterate else "_include", value))
    for value, iterate in request.revincludes:
        out.append(("_revinclude:iterate" if iterate else "_revinclude", value))
    if request.total:
        out.append(("_total", request.total))
    if request.summary:
        out.append(("_summary", request.summary))
    if request.elements:
        out.append(("_elements", ",".join(request.elements)))
    return out


def _entry(ctx: SearchContext, resource: dict, mode: str, request: SearchRequest) -> dict:
    shaped = shape_resource(resource, request.summary, request.elements)
    return {"fullUrl": f"{ctx.base}/{resource['resourceType']}/{resource['id']}", "resource": shaped,
            "search": {"mode": mode}}


def _with_outcome(bundle: dict, request: SearchRequest, notes: list[Issue]) -> dict:
    issues = request.ignored + notes
    if issues:
        bundle.setdefault("entry", []).append(outcome_entry(issues))
    return bundle


# -- _include / _revinclude ------------------------------------------------------------
def collect_included(uow: UnitOfWork, request: SearchRequest, matches: list,
                     visible: Callable | None = None) -> tuple[list, list[Issue]]:
    seen = {(s.res_type, s.res_id) for s in matches}
    frontier = {(s.res_type, s.res_id) for s in matches}
    included: list = []
    notes: list[Issue] = []
    for round_number in range(MAX_ITERATIONS + 1):
        specs_inc = [v for v, it in request.includes if it or round_number == 0]
        specs_rev = [v for v, it in request.revincludes if it or round_number == 0]
        if not frontier or not (specs_inc or specs_rev):
            break
        wanted = set()
        for spec in specs_inc:
            wanted |= include_targets(uow.conn, spec, frontier)
        for spec in specs_rev:
            wanted |= revinclude_sources(uow.conn, spec, frontier)
        new = wanted - seen
        if visible is not None:
            new = only_visible(uow.conn, new, visible)
        if len(included) + len(new) > MAX_INCLUDED:
            notes.append(Issue("too-costly", f"more than {MAX_INCLUDED} included resources; the rest were "
                               "left out", ["_include"], "warning"))
            new = set(sorted(new)[:MAX_INCLUDED - len(included)])
        seen |= new
        loaded = _read_all(uow, new)
        included += loaded
        frontier = {(s.res_type, s.res_id) for s in loaded}
    return included, notes


def only_visible(conn, keys: set, visible: Callable) -> set:
    by_type: dict[str, list[str]] = {}
    for res_type, res_id in keys:
        by_type.setdefault(res_type, []).append(res_id)
    return {(t, i) for t, ids in by_type.items() for i in visible(conn, t, ids)}


def _read_all(uow: UnitOfWork, keys: set) -> list:
    out = []
    by_type: dict[str, list[str]] = {}
    for res_type, res_id in sorted(keys):
        by_type.setdefault(res_type, []).append(res_id)
    for res_type, ids in by_type.items():
        found = uow.read_many(res_type, ids)
        out += [found[i] for i in ids if i in found and not found[i].is_deleted and found[i].resource]
    return out


def _spec_parts(spec: str, frontier_types: set[str], reverse: bool) -> list[tuple[str, str, str | None]]:
    if spec == "*":
        out = []
        for res_type in frontier_types:
            names = registry.revincludes_for(res_type) if reverse else registry.includes_for(res_type)
            out += [(n.split(":")[0], n.split(":")[1], None) for n in names if n != "*"]
        return out
    parts = spec.split(":")
    return [(parts[0], parts[1], parts[2] if len(parts) > 2 else None)]


def include_targets(conn, spec: str, frontier: set) -> set:
    ref = search_reference
    out = set()
    for source, param, target in _spec_parts(spec, {t for t, _ in frontier}, False):
        ids = [i for t, i in frontier if t == source]
        if not ids:
            continue
        query = select(ref.c.target_type, ref.c.target_id).where(
            ref.c.res_type == source, ref.c.param == param, ref.c.res_id.in_(ids), ref.c.target_id.is_not(None))
        if target:
            query = query.where(ref.c.target_type == target)
        out |= {(r.target_type, r.target_id) for r in conn.execute(query)}
    return out


def revinclude_sources(conn, spec: str, frontier: set) -> set:
    ref = search_reference
    out = set()
    for source, param, target in _spec_parts(spec, {t for t, _ in frontier}, True):
        for target_type in {t for t, _ in frontier if target is None or t == target}:
            ids = [i for t, i in frontier if t == target_type]
            query = select(ref.c.res_type, ref.c.res_id).where(
                ref.c.res_type == source, ref.c.param == param, ref.c.target_type == target_type,
                ref.c.target_id.in_(ids)).limit(MAX_INCLUDED + 1)
            out |= {(r.res_type, r.res_id) for r in conn.execute(query)}
    return out


# -- system search: GET [base]?_type=A,B&... ------------------------------------------
def run_system_search(uow: UnitOfWork, requests: list[SearchRequest], ctx: SearchContext,
                      cursor_text: str | None, link_params: list[tuple[str, str]]) -> dict:
    """Pages walk the types in order, each by id; the cursor says which type and where in it."""
    canonical = "|".join(r.canonical() for r in requests)
    count = min(requests[0].count if requests[0].count is not None else ctx.default_count, ctx.max_count)
    cursor = decode_cursor(cursor_text, canonical) if cursor_text else {"t": 0, "k": None}
    entries, keys, has_more = [], None, False
    for index in range(int(cursor.get("t", 0)), len(requests)):
        request = requests[index]
        after = cursor["k"] if index == cursor.get("t") else None
        page = fetch_page(uow, request, {"k": after, "b": False} if after else None, count - len(entries))
        found = uow.read_many(request.res_type, page.ids)
        entries += [_entry(ctx, found[i].resource, "match", request) for i in page.ids if i in found]
        if page.ids:
            keys = {"t": index, "k": page.keys[-1]}
        if len(entries) >= count:
            has_more = page.has_more or index + 1 < len(requests)
            break
    links = [{"relation": "self", "url": _system_url(ctx, link_params, cursor_text)},
             {"relation": "first", "url": _system_url(ctx, link_params, None)}]
    if has_more and keys:
        next_cursor = encode_cursor(canonical, keys["k"], extra={"t": keys["t"]})
        links.append({"relation": "next", "url": _system_url(ctx, link_params, next_cursor)})
    bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    if cursor_text is None and not has_more:
        bundle["total"] = len(entries)
    notes = [i for r in requests for i in r.ignored]
    if notes:
        entries.append(outcome_entry(notes))
    return bundle


def _system_url(ctx: SearchContext, params: list[tuple[str, str]], cursor: str | None) -> str:
    params = list(params) + ([("_cursor", cursor)] if cursor else [])
    return f"{ctx.base}?{urlencode(params)}"
