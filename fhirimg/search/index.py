"""The indexer hook of the repository: index rows are written in the same transaction as
each resource version, so a search never sees a half-indexed resource.

`write_index`, `delete_index` and `find_ids` are what UnitOfWork calls; conditional
create/update/delete (and transaction bundles) find their matches through `find_ids`,
with the full search semantics of the query builder.
"""
from __future__ import annotations

from sqlalchemy import delete

from ..errors import Invalid
from .extract import extract_index_rows
from .tables import TABLES


def write_index(conn, res_type: str, res_id: str, resource: dict) -> None:
    delete_index(conn, res_type, res_id)
    insert_index(conn, res_type, res_id, resource)


def insert_index(conn, res_type: str, res_id: str, resource: dict) -> None:
    """Index rows of a resource that has none yet (version 1): no deletes needed."""
    for kind, rows in extract_index_rows(resource).items():
        if rows:
            conn.execute(TABLES[kind].insert(), [dict(r, res_type=res_type, res_id=res_id) for r in rows])


def delete_index(conn, res_type: str, res_id: str) -> None:
    for table in TABLES.values():
        conn.execute(delete(table).where(table.c.res_type == res_type, table.c.res_id == res_id))


def find_ids(conn, res_type: str, criteria: list[tuple[str, str]], limit: int = 1000) -> list[str]:
    """Ids of live resources matching every criterion (AND); commas within a value are OR.

    Unknown parameters are an error here: a conditional write that silently ignored a
    criterion could update the wrong resource (http.html#cond-update).
    """
    from .query import SearchRequest, matching_ids
    if not criteria:
        raise Invalid("search criteria are required for a conditional operation")
    request = SearchRequest.parse(res_type, criteria, strict=True)
    return matching_ids(conn, request, limit)
