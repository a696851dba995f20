"""What a site holds, read straight from its tables, for comparing two sites."""
from __future__ import annotations

import orjson
from sqlalchemy import select

from fhirimg.store.repository import strip_server_meta
from fhirimg.store.schema import resource_current, resource_version


def _content(raw) -> dict | None:
    if raw is None:
        return None
    resource = strip_server_meta(orjson.loads(raw))
    return resource


def current_state(engine) -> dict:
    """(type, id) -> content of the current version (None when deleted), meta ignored."""
    rv, cur = resource_version, resource_current
    with engine.connect() as conn:
        rows = conn.execute(select(rv.c.res_type, rv.c.res_id, rv.c.content, rv.c.is_deleted)
                            .select_from(cur.join(rv, (rv.c.res_type == cur.c.res_type) & (rv.c.res_id == cur.c.res_id)
                                                  & (rv.c.version == cur.c.version))))
        return {(r.res_type, r.res_id): None if r.is_deleted else _content(r.content) for r in rows}


def all_versions(engine, types: tuple[str, ...] | None = None) -> dict:
    """(type, id) -> [content or None per version, in version order]."""
    rv = resource_version
    out: dict = {}
    with engine.connect() as conn:
        stmt = select(rv.c.res_type, rv.c.res_id, rv.c.version, rv.c.content).order_by(rv.c.seq)
        if types:
            stmt = stmt.where(rv.c.res_type.in_(types))
        for r in conn.execute(stmt):
            out.setdefault((r.res_type, r.res_id), []).append((r.version, _content(r.content)))
    return out


def version_count(engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(resource_version.c.seq)).all())
