"""The indexer hook of the repository: index rows are written in the same transaction as
each resource version, so a search never sees a half-indexed resource.

`write_index`, `delete_index` and `find_ids` are what UnitOfWork calls; conditional
create/update/delete (and transaction bundles) find their matches through `find_ids`,
with the full search semantics of the query builder.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, bindparam, delete, false, select

from ..errors import Invalid
from ..store.schema import resource_current
from . import registry
from .extract import extract_index_rows
from .tables import TABLES, search_token

OWNER_COLUMNS = ("res_type", "res_id")


def write_index(conn, res_type: str, res_id: str, resource: dict) -> None:
    delete_index(conn, res_type, res_id)
    insert_index(conn, res_type, res_id, resource)


def insert_index(conn, res_type: str, res_id: str, resource: dict) -> None:
    """Index rows of a resource that has none yet (version 1): no deletes needed."""
    rows_by_kind = {kind: rows for kind, rows in extract_index_rows(resource).items() if rows}
    if not rows_by_kind:
        return
    if conn.dialect.name == "postgresql":
        insert_index_postgres(conn, res_type, res_id, rows_by_kind)
        return
    for kind, rows in rows_by_kind.items():
        conn.execute(TABLES[kind].insert(), [dict(r, res_type=res_type, res_id=res_id) for r in rows])


def insert_index_postgres(conn, res_type: str, res_id: str, rows_by_kind: dict[str, list[dict]]) -> None:
    """All index rows of a resource in one statement: one ``INSERT ... SELECT FROM unnest(arrays)`` per table.

    executemany sends each row as its own execution: ~27 rows over 5 tables for an
    ImagingStudy of 10 instances took ~6 ms per resource, the largest cost of a push.
    """
    kinds = tuple(sorted(rows_by_kind))
    params: dict = {"res_type": res_type, "res_id": res_id}
    for kind in kinds:
        rows = rows_by_kind[kind]
        for column in value_columns(kind):
            params[f"{kind}_{column.name}"] = [row.get(column.name) for row in rows]
    conn.exec_driver_sql(postgres_insert_sql(kinds), params)


def value_columns(kind: str) -> list:
    return [c for c in TABLES[kind].columns if c.name not in OWNER_COLUMNS]


_INSERT_SQL: dict[tuple[str, ...], str] = {}


def postgres_insert_sql(kinds: tuple[str, ...]) -> str:
    sql = _INSERT_SQL.get(kinds)
    if sql is None:
        parts = []
        for kind in kinds:
            columns = value_columns(kind)
            arrays = ", ".join(f"CAST(%({kind}_{c.name})s AS {'bigint' if isinstance(c.type, BigInteger) else 'text'}[])"
                               for c in columns)
            names = ", ".join(c.name for c in columns)
            parts.append(f"ins_{kind} AS (INSERT INTO {TABLES[kind].name} (res_type, res_id, {names}) "
                         f"SELECT %(res_type)s, %(res_id)s, * FROM unnest({arrays}))")
        sql = _INSERT_SQL[kinds] = "WITH " + ", ".join(parts) + " SELECT 1"
    return sql


def delete_index(conn, res_type: str, res_id: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(POSTGRES_DELETE_SQL, {"res_type": res_type, "res_id": res_id})
        return
    for table in TABLES.values():
        conn.execute(delete(table).where(table.c.res_type == res_type, table.c.res_id == res_id))


POSTGRES_DELETE_SQL = "WITH " + ", ".join(
    f"del_{kind} AS (DELETE FROM {table.name} WHERE res_type = %(res_type)s AND res_id = %(res_id)s)"
    for kind, table in TABLES.items()) + " SELECT 1"


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
        params = {"k": keys, "res_type": [plain[i][0] for i in keys], "param": [plain[i][1] for i in keys],
                  "system": [plain[i][2] for i in keys], "code": [plain[i][3] for i in keys], "limit": limit}
        found: dict[int, list[str]] = {i: [] for i in keys}
        for k, res_id in conn.exec_driver_sql(POSTGRES_TOKEN_MATCH_MANY, params):
            found[k].append(res_id)
        results = [found.get(i) for i in range(len(searches))]
    for i, (res_type, criteria) in enumerate(searches):
        if results[i] is None:
            results[i] = find_ids(conn, res_type, criteria, limit)
    return results


# One token_match_ids per row of the arrays (LATERAL keeps each search's own LIMIT). The
# values are compared in the "C" collation of the index columns, so the indexes are used.
POSTGRES_TOKEN_MATCH_MANY = """
SELECT q.k, m.res_id
FROM unnest(CAST(%(k)s AS integer[]), CAST(%(res_type)s AS text[]), CAST(%(param)s AS text[]),
            CAST(%(system)s AS text[]), CAST(%(code)s AS text[])) AS q(k, res_type, param, system, code)
CROSS JOIN LATERAL (
    SELECT cur.res_id FROM resource_current cur
    WHERE cur.res_type = q.res_type AND cur.is_deleted IS false AND cur.res_id IN (
        SELECT t.res_id FROM search_token t
        WHERE t.res_type = q.res_type AND t.param = q.param
          AND t.system = q.system COLLATE "C" AND t.code = q.code COLLATE "C")
    ORDER BY cur.res_id LIMIT %(limit)s) AS m
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
