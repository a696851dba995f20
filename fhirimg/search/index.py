"""The indexer hook of the repository: index rows are written in the same transaction as
each resource version, so a search never sees a half-indexed resource.

What UnitOfWork calls: on SQLite `write_index_many` (one statement a table for all the
versions it holds); on PostgreSQL `extract_index_rows`, `owned_rows` and
`postgres_index_ctes`, to send the rows of all the versions it holds in one statement.
Conditional create/update/delete (and transaction bundles) find their matches through
`find_ids` / `find_ids_many`, with the full search semantics of the query builder.
"""
from __future__ import annotations

import functools

from sqlalchemy import BigInteger, bindparam, delete, false, select

from ..errors import Invalid
from ..store import driver
from ..store.schema import resource_current
from . import registry
from .extract import extract_index_rows
from .tables import TABLES, search_token

OWNER_COLUMNS = ("res_type", "res_id")


def write_index_many(conn, dropped: list[tuple[str, str]], indexed: list[tuple[tuple[str, str], dict]]) -> None:
    """SQLite: delete every index row of the resources in ``dropped``, then insert the rows
    of each (type, id), resource in ``indexed``: one statement a table, whatever the count
    (a replicated page of 200 resources sent ~2 000 statements, each built by SQLAlchemy)."""
    if dropped:
        owners = [{"t": t, "i": i} for t, i in dropped]
        for table in TABLES.values():
            conn.execute(_DELETE_OWNED[table.name], owners)
    rows_by_kind: dict[str, list[dict]] = {}
    for (res_type, res_id), resource in indexed:
        for kind, rows in extract_index_rows(resource).items():
            rows_by_kind.setdefault(kind, []).extend(dict(r, res_type=res_type, res_id=res_id) for r in rows)
    for kind, rows in rows_by_kind.items():
        if rows:
            conn.execute(TABLES[kind].insert(), rows)


_DELETE_OWNED = {table.name: delete(table).where(table.c.res_type == bindparam("t"), table.c.res_id == bindparam("i"))
                 for table in TABLES.values()}


def owned_rows(res_type: str, res_id: str, rows: list[dict]) -> list[dict]:
    """Index rows with their owner, as ``postgres_index_ctes`` takes them ("t" type, "i" id)."""
    return [dict(row, t=res_type, i=res_id) for row in rows]


def postgres_index_ctes(dropped: list[tuple[str, str]], rows_by_kind: dict[str, list[dict]]) -> tuple[list[str], dict]:
    """Data-modifying CTEs, and their parameters, that delete every index row of the
    resources in ``dropped`` and insert ``rows_by_kind`` (rows carrying their owner in "t"
    and "i"), for the caller to run as ONE statement with whatever else it writes.

    Each table's rows travel as one JSON text read by ``json_to_recordset``: executemany
    sent each of ~27 rows of an ImagingStudy as its own execution (~6 ms per resource), and
    one array per column cost ~5 us per value to dump in psycopg's Python code. All CTEs
    see the snapshot the statement started with, so the deletes never see the inserts.
    """
    ctes: list[str] = []
    params: dict = {}
    if dropped:
        params["idx_dropped"] = driver.json_rows([{"t": t, "i": i} for t, i in dropped])
        ctes.extend(drop_ctes(len(dropped)))
    for kind in sorted(rows_by_kind):
        if rows_by_kind[kind]:
            params[f"idx_{kind}"] = driver.json_rows(rows_by_kind[kind])
            ctes.append(_INSERT_CTES[kind])
    return ctes, params


def value_columns(kind: str) -> list:
    return [c for c in TABLES[kind].columns if c.name not in OWNER_COLUMNS]


def _insert_cte(kind: str) -> str:
    columns = value_columns(kind)
    names = ", ".join(f'"{c.name}"' for c in columns)
    types = ", ".join(f'"{c.name}" {"bigint" if isinstance(c.type, BigInteger) else "text"}' for c in columns)
    return (f"ins_{kind} AS (INSERT INTO {TABLES[kind].name} (res_type, res_id, {names}) "
            f"SELECT r.t, r.i, {names} FROM json_to_recordset(%(idx_{kind})s::json) AS r(t text, i text, {types}))")


_INSERT_CTES = {kind: _insert_cte(kind) for kind in TABLES}


@functools.cache
def drop_ctes(count: int) -> list[str]:
    # The count in the text: estimated at 100 rows, the owners were hash-joined to whole tables.
    return [f"drop_{kind} AS (DELETE FROM {table.name} x USING (SELECT * FROM json_to_recordset(%(idx_dropped)s::json) "
            f"AS j(t text, i text) LIMIT {int(count)}) AS k WHERE x.res_type = k.t AND x.res_id = k.i)"
            for kind, table in TABLES.items()]


def find_ids(conn, res_type: str, criteria: list[tuple[str, str]], limit: int = 1000) -> list[str]:
    """Ids of live resources matching every criterion (AND); commas within a value are OR.

    Unknown parameters are an error here: a conditional write that silently ignored a
    criterion could update the wrong resource (http.html#cond-update).
    """
    from .query import SearchRequest, matching_ids
    if not criteria:
        raise Invalid("search criteria are required for a conditional operation")
    token = plain_token_criterion(res_type, criteria)
    if token is not None:
        return token_match_ids(conn, res_type, *token, limit)
    request = SearchRequest.parse(res_type, criteria, strict=True)
    return matching_ids(conn, request, limit)


def find_ids_many(conn, searches: list[tuple[str, list[tuple[str, str]]]], limit: int = 1000) -> list[list[str]]:
    """``find_ids`` of several (type, criteria) at once, in order.

    On PostgreSQL the plain ``system|code`` ones go in one statement (a push names its
    Patient, Endpoint and ImagingStudy that way: one round trip and one plan instead of
    three); the others, and everything on SQLite, are run one by one.
    """
    results: list[list[str] | None] = [None] * len(searches)
    plain = {}
    if conn.dialect.name == "postgresql":
        for i, (res_type, criteria) in enumerate(searches):
            token = plain_token_criterion(res_type, criteria) if criteria else None
            if token is not None:
                plain[i] = (res_type, *token)
    if len(plain) > 1:
        keys = sorted(plain)
        wanted = driver.json_rows([{"k": i, "t": plain[i][0], "p": plain[i][1], "s": plain[i][2], "c": plain[i][3]}
                                   for i in keys])
        found: dict[int, list[str]] = {i: [] for i in keys}
        for k, res_id in driver.fetch_all(conn, token_match_many_sql(len(keys), limit), {"wanted": wanted}):
            found[k].append(res_id)
        results = [found.get(i) for i in range(len(searches))]
    for i, (res_type, criteria) in enumerate(searches):
        if results[i] is None:
            results[i] = find_ids(conn, res_type, criteria, limit)
    return results


@functools.cache
def token_match_many_sql(count: int, limit: int) -> str:
    """One ``system|code`` search per row of a JSON set, each with its own LIMIT (LATERAL).

    Index rows exist only for live resources, so the index alone answers: joined to
    resource_current, the planner at times fetched every current row of the type and sorted
    them for a merge join (13% of PostgreSQL's CPU in a push). The values are compared in
    the "C" collation of the index columns, so the lookup index is used. The number of
    searches is written into the text: a JSON set is otherwise estimated at 100 rows.
    """
    return f"""
SELECT q.k, m.res_id
FROM (SELECT * FROM json_to_recordset(%(wanted)s::json) AS j(k integer, t text, p text, s text, c text)
      LIMIT {int(count)}) AS q
CROSS JOIN LATERAL (
    SELECT DISTINCT x.res_id FROM search_token x
    WHERE x.res_type = q.t AND x.param = q.p AND x.system = q.s COLLATE "C" AND x.code = q.c COLLATE "C"
    ORDER BY x.res_id LIMIT {int(limit)}) AS m
ORDER BY q.k, m.res_id
"""


def plain_token_criterion(res_type: str, criteria: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    """(param, system, code) when the criteria are one ``token=system|code`` and nothing else.

    That is how nearly every conditional write names its target (an MRN, a Study Instance
    UID); building it through the general query builder cost ~3 ms of the ~15 ms a push
    spent finding its targets. Modifiers, several values, escapes and partial forms
    (``|code``, ``system|``) take the general path.
    """
    if len(criteria) != 1:
        return None
    name, value = criteria[0]
    if name.startswith("_") or ":" in name or "," in value or "\\" in value:
        return None
    param = registry.parameter(res_type, name)
    if param is None or param.type != "token" or param.expression is None:
        return None
    system, bar, code = value.partition("|")
    if not bar or not system or not code:
        return None
    return name, system, code


_TOKEN_MATCH = (
    select(resource_current.c.res_id)
    .where(resource_current.c.res_type == bindparam("res_type"), resource_current.c.is_deleted.is_(false()),
           resource_current.c.res_id.in_(
               select(search_token.c.res_id).where(search_token.c.res_type == bindparam("res_type"),
                                                   search_token.c.param == bindparam("param"),
                                                   search_token.c.system == bindparam("system"),
                                                   search_token.c.code == bindparam("code"))))
    .order_by(resource_current.c.res_id).limit(bindparam("limit")))


def token_match_ids(conn, res_type: str, param: str, system: str, code: str, limit: int) -> list[str]:
    """The general path's query for one ``system|code`` token, built once."""
    rows = conn.execute(_TOKEN_MATCH, {"res_type": res_type, "param": param, "system": system, "code": code,
                                       "limit": limit})
    return [row.res_id for row in rows]
