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

from sqlalchemy import bindparam, select, update
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
class Applied:
    """What ``replication_applied`` holds for one resource of one link."""

    source_version: int
    source_updated_ms: int
    local_version: int


class AppliedRows:
    """The ``replication_applied`` rows a page touches: read in one query a type before the
    page is applied, changed in memory as it is, written back in one statement a kind at
    the end (``write``), in the page's transaction. Reading and writing them one by one was
    two of the five round trips each replicated change cost on PostgreSQL."""

    def __init__(self, link: str) -> None:
        self.link = link
        self.rows: dict[tuple[str, str], Applied | None] = {}
        self.stored: set[tuple[str, str]] = set()  # keys that have a row in the table
        self.dirty: set[tuple[str, str]] = set()

    def load(self, conn: Connection, keys) -> None:
        ra = replication_applied
        by_type: dict[str, list[str]] = {}
        for res_type, res_id in dict.fromkeys(keys):
            if (res_type, res_id) not in self.rows:
                by_type.setdefault(res_type, []).append(res_id)
                self.rows[(res_type, res_id)] = None
        for res_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                for row in conn.execute(select(ra).where(ra.c.link == self.link, ra.c.res_type == res_type,
                                                         ra.c.res_id.in_(ids[start:start + 500]))):
                    key = (row.res_type, row.res_id)
                    self.rows[key] = Applied(row.source_version, row.source_updated_ms, row.local_version)
                    self.stored.add(key)

    def get(self, uow: UnitOfWork, change: "Change") -> Applied | None:
        key = (change.res_type, change.res_id)
        if key not in self.rows:  # not loaded ahead: ask now (uow.conn sends what it holds)
            self.load(uow.conn, [key])
        return self.rows[key]

    def put(self, change: "Change", applied: Applied) -> None:
        key = (change.res_type, change.res_id)
        self.rows[key] = applied
        self.dirty.add(key)

    def write(self, conn: Connection) -> None:
        ra = replication_applied
        values = [{"link": self.link, "res_type": t, "res_id": i, **vars(self.rows[(t, i)])}
                  for t, i in sorted(self.dirty)]
        new = [v for v in values if (v["res_type"], v["res_id"]) not in self.stored]
        old = [{"b_" + k: v for k, v in row.items()} for row in values
               if (row["res_type"], row["res_id"]) in self.stored]
        if new:
            conn.execute(ra.insert(), new)
        if old:
            conn.execute(update(ra).where(ra.c.link == bindparam("b_link"), ra.c.res_type == bindparam("b_res_type"),
                                          ra.c.res_id == bindparam("b_res_id"))
                         .values(source_version=bindparam("b_source_version"),
                                 source_updated_ms=bindparam("b_source_updated_ms"),
                                 local_version=bindparam("b_local_version")), old)
        self.stored.update(self.dirty)
        self.dirty.clear()


@dataclass
class ApplyContext:
    link: str
    own_site: str
    peer_site: str  # the origin of changes that carry none
    types: frozenset[str]
    conflict_rule: str
    now_ms: int
    applied: AppliedRows = field(init=False)

    def __post_init__(self) -> None:
        self.applied = AppliedRows(self.link)


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
    if isinstance(meta, dict) and str(meta.get("versionId", "")).isascii() and str(meta.get("versionId", "")).isdigit():
        return int(meta["versionId"])
    return None


def _ms_of(instant) -> int | None:
    from datetime import datetime
    if not isinstance(instant, str) or not _INSTANT.match(instant):
        return None
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1000)


def apply_changes(uow: UnitOfWork, ctx: ApplyContext, changes: list, outcome: PageOutcome) -> None:
    """Apply a page's changes in order (a str is an entry that could not be read: recorded).

    The resources the page names and what this link applied of them are read first, in one
    query a type, and the link's bookkeeping is written once at the end: a page costs a few
    statements plus its writes (which the unit of work holds and sends together), not five
    round trips a change.
    """
    wanted = [c for c in changes if not isinstance(c, str) and replicated(ctx, c)]
    by_type: dict[str, list[str]] = {}
    for change in wanted:
        by_type.setdefault(change.res_type, []).append(change.res_id)
    for res_type, ids in by_type.items():
        uow.prime(res_type, ids)
    ctx.applied.load(uow.conn, [(c.res_type, c.res_id) for c in wanted])
    for change in changes:
        if isinstance(change, str):
            reject_malformed(uow.conn, ctx, change, outcome)
        else:
            apply_change(uow, ctx, change, outcome)
    ctx.applied.write(uow.conn)


def replicated(ctx: ApplyContext, change: Change) -> bool:
    return change.res_type in SUPPORTED_TYPES and change.res_type in (ctx.types or REPLICATED_BY_DEFAULT)


def apply_change(uow: UnitOfWork, ctx: ApplyContext, change: Change, outcome: PageOutcome) -> str:
    """Apply one change; returns what happened (applied, echo, not-replicated, already, conflict-*, rejected).
    What it records for the link is written by ``ctx.applied.write`` (apply_changes does)."""
    origin = change.origin or ctx.peer_site
    if not replicated(ctx, change):
        outcome.skipped += 1
        return "not-replicated"
    current = uow.read(change.res_type, change.res_id)
    applied = ctx.applied.get(uow, change)
    if origin == ctx.own_site:
        remember_echo(ctx, change, current, applied)
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
    remember_applied(ctx, change, stored.version if stored is not None else 0)
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
    remember_applied(ctx, change, applied.local_version if applied is not None else 0)
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


def remember_applied(ctx: ApplyContext, change: Change, local_version: int) -> None:
    ctx.applied.put(change, Applied(change.version or 0, change.updated_ms or 0, local_version))


def remember_echo(ctx: ApplyContext, change: Change, current, applied) -> None:
    """Our own change coming back: the peer's version equals our current one, so a later
    edit on the peer is not mistaken for a conflict with it."""
    if current is None:
        return
    equal = current.is_deleted if change.resource is None else (
        not current.is_deleted and same_content(current.resource, change.resource))
    if equal and (applied is None or (change.version or 0) > applied.source_version):
        remember_applied(ctx, change, current.version)
