"""Search index tables, written in the same transaction as each resource version.

This first cut indexes what conditional operations need (``identifier`` tokens and
``_id``); the search issue extends the registry and tables.
"""
from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table, delete, select

from ..errors import Invalid
from ..store.schema import register_metadata, resource_current

index_metadata = MetaData()

search_token = Table(
    "search_token", index_metadata,
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=False),
    Index("ix_search_token_lookup", "res_type", "param", "code", "system"),
    Index("ix_search_token_owner", "res_type", "res_id"),
)
register_metadata(index_metadata)


def extract_tokens(resource: dict) -> list[dict]:
    rows = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            rows.append({"param": "identifier", "system": ident.get("system"), "code": ident["value"]})
    return rows


def write_index(conn, res_type: str, res_id: str, resource: dict) -> None:
    delete_index(conn, res_type, res_id)
    rows = [dict(r, res_type=res_type, res_id=res_id) for r in extract_tokens(resource)]
    if rows:
        conn.execute(search_token.insert(), rows)


def delete_index(conn, res_type: str, res_id: str) -> None:
    conn.execute(delete(search_token).where(search_token.c.res_type == res_type,
                                            search_token.c.res_id == res_id))


def find_ids(conn, res_type: str, criteria: list[tuple[str, str]]) -> list[str]:
    """Ids of live resources matching every criterion (AND); commas within a value are OR."""
    if not criteria:
        raise Invalid("search criteria are required for a conditional operation")
    cur = resource_current
    query = select(cur.c.res_id).where(cur.c.res_type == res_type, cur.c.is_deleted.is_(False))
    for name, value in criteria:
        query = query.where(_criterion(res_type, name, value))
    return [row.res_id for row in conn.execute(query.limit(1000))]


def _criterion(res_type: str, name: str, value: str):
    cur = resource_current
    if name == "_id":
        return cur.c.res_id.in_(value.split(","))
    if name == "identifier":
        tok = search_token
        ors = [_token_match(v) for v in value.split(",")]
        from sqlalchemy import or_
        sub = select(tok.c.res_id).where(tok.c.res_type == res_type, tok.c.param == "identifier", or_(*ors))
        return cur.c.res_id.in_(sub)
    raise Invalid(f"search parameter {name!r} is not supported for {res_type} conditional operations",
                  [name])


def _token_match(value: str):
    tok = search_token
    if "|" not in value:
        return tok.c.code == value
    system, code = value.split("|", 1)
    if not system:
        return (tok.c.code == code) & tok.c.system.is_(None)
    if not code:
        return tok.c.system == system
    return (tok.c.system == system) & (tok.c.code == code)
