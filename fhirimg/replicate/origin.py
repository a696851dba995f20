"""This site's identity, and where each change came from.

Every server has a site id (a ``urn:uuid:`` made once per database, or ``replicate.site_id``
from the configuration). History entries carry the id of the site that first wrote each
change, so a replicator can refuse to send a change back to where it came from.
"""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .schema import change_origin, site_identity

ORIGIN_EXTENSION = "https://fhirimg.org/fhir/StructureDefinition/change-origin"


def site_id(engine: Engine, configured: str | None = None) -> str:
    """The configured site id, else the one stored in the database (made on first use)."""
    if configured:
        return configured
    with engine.begin() as conn:
        found = conn.execute(select(site_identity.c.site_id).where(site_identity.c.id == 1)).scalar()
        if found:
            return found
    from .links import writing
    try:
        with writing(engine) as conn:
            made = f"urn:uuid:{uuid.uuid4()}"
            conn.execute(site_identity.insert().values(id=1, site_id=made))
            return made
    except IntegrityError:  # another process made it first
        with engine.begin() as conn:
            return conn.execute(select(site_identity.c.site_id).where(site_identity.c.id == 1)).scalar_one()


def record_origins(conn: Connection, rows: list[dict]) -> None:
    """Remember, in the writing transaction, which versions came from which site."""
    if rows:
        conn.execute(change_origin.insert(), rows)


def origin_extension(origin: str) -> dict:
    return {"url": ORIGIN_EXTENSION, "valueUri": origin}


def origin_of_entry(entry: dict) -> str | None:
    for ext in entry.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == ORIGIN_EXTENSION and isinstance(ext.get("valueUri"), str):
            return ext["valueUri"]
    return None
