"""Applying one change from a peer's history to the local store, idempotently.

Creates and updates keep the source's id and content (update-as-create); deletes
delete. ``replication_applied`` remembers, per link and resource, the last source
version applied and the local version it became: an older or equal source version is
skipped, and a local version other than that one is a local edit, i.e. a conflict,
settled by the link's rule and logged. A change whose origin is this site is an echo
and never applied.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ..errors import FhirError
from ..resources import REPLICATED_BY_DEFAULT, SUPPORTED_TYPES, is_valid_id, validate_resource
from ..store.records import StoredVersion
from ..store.repository import UnitOfWork, same_content
from .links import record_event
from .origin import origin_of_entry
from .schema import replication_applied

log = logging.getLogger("fhirimg.replicate")
_ETAG = re.compile(r'^(?:W/)?"(\d+)"$')
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class MalformedEntry(Exception):
    """An entry that cannot be understood as a change (no method, no type/id)."""


@dataclass
class Change:
    """One entry of a history Bundle, parsed."""

    method: str  # POST PUT PATCH DELETE
    res_type: str
    res_id: str
    version: int | None
    updated_ms: int | None
    resource: dict | None
    origin: str | None


@dataclass
class ApplyContext:
    link: str
    own_site: str
    peer_site: str  # the origin of changes that carry none
    types: frozenset[str]
    conflict_rule: str
    now_ms: int


@dataclass
class PageOutcome:
    applied: int = 0
    skipped: int = 0
    conflicts: int = 0
    rejected: int = 0
    origins: list[tuple[StoredVersion, str]] = field(default_factory=list)


def parse_change(entry, index: int) -> Change:
    """An entry as a Change; MalformedEntry says what is missing, with the entry's index."""
    if not isinstance(entry, dict):
        raise MalformedEntry(f"entry[{index}] is not an object")
    request = entry.get("request") or {}
    method = request.get("method")
    if method not in ("POST", "PUT", "PATCH", "DELETE"):
        raise MalformedEntry(f"entry[{index}].request.method {method!r} is not POST, PUT, PATCH or DELETE")
    resource = entry.get("resource")
    res_type, res_id = type_and_id(entry, resource)
    if res_type is None or res_id is None or not is_valid_id(res_id):
        raise MalformedEntry(f"entry[{index}] names no resource type and id (fullUrl, request.url, resource.id)")
    if method != "DELETE" and not isinstance(resource, dict):
        raise MalformedEntry(f"entry[{index}] is a {method} without a resource")
    response = entry.get("response") or {}
    version = _version_of(response.get("etag"), resource)
    return Change(method, res_type, res_id, version, _ms_of(response.get("lastModified")),
                  resource if method != "DELETE" else None, origin_of_entry(entry))


def type_and_id(entry: dict, resource) -> tuple[str | None, str | None]:
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
        return resource["resourceType"], resource["id"]
    for text in ((entry.get("request") or {}).get("url"), entry.get("fullUrl")):
        if isinstance(text, str):
            parts = text.split("?", 1)[0].rstrip("/").split("/")
            if "_history" in parts:
                parts = parts[:parts.index("_history")]
            if len(parts) >= 2 and parts[-2][:1].isupper():
                return parts[-2], parts[-1]
    return None, None


def _version_of(etag, resource) -> int | None:
    if isinstance(etag, str) and _ETAG.match(etag):
        return int(_ETAG.match(etag).group(1))
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if isinstance(meta, dict) and str(meta.get("versionId", "")).isdigit():
        return int(meta["versionId"])
    return None


def _ms_of(instant) -> int | None:
    from datetime import datetime
    if not isinstance(instant, str) or not _INSTANT.match(instant):
        return None
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1000)


def apply_change(uow: UnitOfWork, ctx: ApplyContext, change: Change, outcome: PageOutcome) -> str:
    """Apply one change; returns what happened (applied, echo, not-replicated, already, conflict-*, rejected)."""
    origin = change.origin or ctx.peer_site
    if change.res_type not in SUPPORTED_TYPES or change.res_type not in (ctx.types or REPLICATED_BY_DEFAULT):
        outcome.skipped += 1
        return "not-replicated"
    current = uow.read(change.res_type, change.res_id)
    applied = applied_row(uow.conn, ctx.link, change)
    if origin == ctx.own_site:
        remember_echo(uow.conn, ctx, change, current, applied)
        outcome.skipped += 1
        return "echo"
    if applied is not None and change.version is not None and change.version <= applied.source_version:
        outcome.skipped += 1
        return "already"
    if change.resource is not None:
        try:
            validate_resource(change.resource, change.res_type)
        except FhirError as exc:
            reject(uow.conn, ctx, change, exc.diagnostics, outcome)
            return "rejected"
    if is_conflict(change, current, applied) and not source_prevails(ctx, change, current):
        keep_local(uow.conn, ctx, change, current, applied, outcome)
        return "conflict-local-kept"
    verdict = "applied"
    if is_conflict(change, current, applied):
        note_conflict(uow.conn, ctx, change, current, "source version replaced the local edit", outcome)
        verdict = "conflict-source-applied"
    stored = write_change(uow, change)
    remember_applied(uow.conn, ctx, change, applied, stored.version if stored is not None else 0)
    if stored is not None and stored.changed and stored.seq == 0:
        outcome.origins.append((stored, origin))
    outcome.applied += 1
    return verdict


def write_change(uow: UnitOfWork, change: Change) -> StoredVersion | None:
    if change.method == "DELETE":
        return uow.delete(change.res_type, change.res_id)
    return uow.update(change.res_type, change.res_id, dict(change.resource, id=change.res_id))


def is_conflict(change: Change, current: StoredVersion | None, applied) -> bool:
    """The local resource was changed here since this link last wrote it, and differs."""
    if current is None:
        return False
    if applied is not None and current.version == applied.local_version:
        return False
    if change.resource is None:
        return not current.is_deleted
    return current.is_deleted or not same_content(current.resource, change.resource)


def source_prevails(ctx: ApplyContext, change: Change, current: StoredVersion) -> bool:
    if ctx.conflict_rule == "source-wins":
        return True
    if ctx.conflict_rule == "local-wins":
        return False
    # newest-wins: compare when each side was written; a tie goes to the larger site id so
    # that two sites replicating each other settle on the same version.
    if change.updated_ms is None or change.updated_ms == current.last_updated_ms:
        return (change.origin or ctx.peer_site) > ctx.own_site
    return change.updated_ms > current.last_updated_ms


def keep_local(conn, ctx: ApplyContext, change: Change, current: StoredVersion, applied, outcome: PageOutcome) -> None:
    note_conflict(conn, ctx, change, current, f"local version {current.version} kept ({ctx.conflict_rule})", outcome)
    # The source version counts as seen, but the local edit stays "not ours": the source's
    # next change meets it again as a conflict instead of silently overwriting it.
    remember_applied(conn, ctx, change, applied, applied.local_version if applied is not None else 0)
    outcome.skipped += 1


def note_conflict(conn, ctx: ApplyContext, change: Change, current: StoredVersion, what: str,
                  outcome: PageOutcome) -> None:
    detail = (f"{change.res_type}/{change.res_id}: source version {change.version} ({change.method}) "
              f"met local edit version {current.version}; {what}")
    log.warning("replication link %s conflict: %s", ctx.link, detail)
    record_event(conn, ctx.link, "conflict", detail, ctx.now_ms, change.res_type, change.res_id, change.version)
    outcome.conflicts += 1


def reject(conn, ctx: ApplyContext, change: Change, why: str, outcome: PageOutcome) -> None:
    detail = f"{change.res_type}/{change.res_id} version {change.version} not applied: {why}"
    log.error("replication link %s rejected an entry: %s", ctx.link, detail)
    record_event(conn, ctx.link, "rejected", detail, ctx.now_ms, change.res_type, change.res_id, change.version)
    outcome.rejected += 1


def reject_malformed(conn, ctx: ApplyContext, why: str, outcome: PageOutcome) -> None:
    log.error("replication link %s rejected an entry: %s", ctx.link, why)
    record_event(conn, ctx.link, "rejected", why, ctx.now_ms)
    outcome.rejected += 1


def applied_row(conn: Connection, link: str, change: Change):
    ra = replication_applied
    return conn.execute(select(ra).where(ra.c.link == link, ra.c.res_type == change.res_type,
                                         ra.c.res_id == change.res_id)).first()


def remember_applied(conn: Connection, ctx: ApplyContext, change: Change, applied, local_version: int) -> None:
    ra = replication_applied
    values = {"source_version": change.version or 0, "source_updated_ms": change.updated_ms or 0,
              "local_version": local_version}
    if applied is None:
        conn.execute(ra.insert().values(link=ctx.link, res_type=change.res_type, res_id=change.res_id, **values))
    else:
        conn.execute(update(ra).where(ra.c.link == ctx.link, ra.c.res_type == change.res_type,
                                      ra.c.res_id == change.res_id).values(**values))


def remember_echo(conn: Connection, ctx: ApplyContext, change: Change, current, applied) -> None:
    """Our own change coming back: the peer's version equals our current one, so a later
    edit on the peer is not mistaken for a conflict with it."""
    if current is None:
        return
    equal = current.is_deleted if change.resource is None else (
        not current.is_deleted and same_content(current.resource, change.resource))
    if equal and (applied is None or (change.version or 0) > applied.source_version):
        remember_applied(conn, ctx, change, applied, current.version)
