"""Running one resolved Bundle entry on a unit of work: the interaction its request names.

By the time an entry gets here its identity is decided (`entry.action`, `entry.target_id`),
its resource validated and its references rewritten, so writes go straight to the unit
of work without validating a second time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlencode

from .. import interactions
from ..auth.decision import decide, reachable_ids, require_resource, require_version
from ..auth.writes import refuse_chains
from ..errors import FhirError, Invalid, Issue, outcome_entry
from ..search import registry
from ..store.records import StoredVersion
from ..store.repository import UnitOfWork


@dataclass
class EntryResult:
    """The answer to one entry: status, the version written or read, a GET body, or an error."""

    status: int
    stored: StoredVersion | None = None
    render: Callable[[], dict] | None = None  # a GET's body, built after commit (meta is final then)
    error: FhirError | None = None
    diagnostics: str | None = None

    @property
    def body(self) -> dict | None:
        return self.render() if self.render is not None else None


def execute_entry(uow: UnitOfWork, entry, settings) -> EntryResult:
    try:
        return ACTIONS[entry.action](uow, entry, settings)
    except FhirError as error:
        if getattr(error, "resource", None) not in (None, (entry.res_type, entry.target_id)):
            raise  # another entry's create, written with this entry's statements: the caller places it
        raise located(error, entry) from None


def located(error: FhirError, entry) -> FhirError:
    """Resource paths (`Patient.birthDate`) go under the entry's resource; anything else
    (If-Match, a version conflict) is about the entry's request."""
    request_path = f"{entry.path}.request" + (".ifMatch" if entry.if_match else "")
    for issue in error.issues:
        paths = [e for e in issue.expression if "." in e and e[0].isupper()]
        if paths and len(paths) == len(issue.expression):
            issue.expression = [f"{entry.path}.resource.{p.split('.', 1)[1]}" for p in paths]
        else:
            issue.expression = [request_path]
    return error


def create(uow: UnitOfWork, entry, settings) -> EntryResult:
    stored = uow.create(entry.res_type, entry.resource, entry.target_id, method=entry.method)
    return EntryResult(201, stored, diagnostics=f"created {entry.res_type}/{entry.target_id}")


def matched(uow: UnitOfWork, entry, settings) -> EntryResult:
    if uow.guard is not None:  # the answer shows the matched resource: that is a read
        uow.guard.before_reveal(uow, entry.res_type, entry.target_id)
    return EntryResult(200, uow.read(entry.res_type, entry.target_id),
                       diagnostics="ifNoneExist matched an existing resource; nothing created")


def update(uow: UnitOfWork, entry, settings) -> EntryResult:
    body = {**entry.resource, "id": entry.target_id}
    stored = uow.update(entry.res_type, entry.target_id, body, entry.if_match_version)
    if not stored.changed:
        return EntryResult(200, stored, diagnostics="content unchanged; no new version")
    return EntryResult(201 if stored.created else 200, stored)


def patch(uow: UnitOfWork, entry, settings) -> EntryResult:
    result = interactions.patch(uow, entry.res_type, entry.target_id, entry.operations, entry.if_match_version)
    return EntryResult(result.status, result.stored)


def delete(uow: UnitOfWork, entry, settings) -> EntryResult:
    result = interactions.delete(uow, entry.res_type, entry.target_id, entry.if_match_version)
    return EntryResult(204, result.stored, diagnostics=result.diagnostics)


def nothing(uow: UnitOfWork, entry, settings) -> EntryResult:
    return EntryResult(204, None, diagnostics="no resource matches the criteria; nothing deleted")


def require_read(uow: UnitOfWork, entry, settings) -> None:
    if settings.principal is not None:
        require_resource(uow.conn, settings.principal, "r", entry.res_type, entry.res_id)


def read(uow: UnitOfWork, entry, settings) -> EntryResult:
    require_read(uow, entry, settings)
    stored = interactions.read(uow, entry.res_type, entry.res_id).stored
    if is_not_modified(entry, stored):
        return EntryResult(304, stored)
    return EntryResult(200, stored, render=None if entry.method == "HEAD" else lambda: stored.resource)


def vread(uow: UnitOfWork, entry, settings) -> EntryResult:
    require_read(uow, entry, settings)
    stored = interactions.vread(uow, entry.res_type, entry.res_id, entry.version).stored
    if settings.principal is not None:
        require_version(uow.conn, settings.principal, stored)
    return EntryResult(200, stored, render=None if entry.method == "HEAD" else lambda: stored.resource)


def search(uow: UnitOfWork, entry, settings) -> EntryResult:
    """GET Type?criteria inside a Bundle: a searchset of the store as this transaction sees it."""
    params = parse_qsl(entry.query or "", keep_blank_values=True)
    known = {p.name for p in registry.parameters_for(entry.res_type)}
    criteria = [(n, v) for n, v in params if n in known]
    ignored = [n for n, _ in params if n not in known and n not in interactions.RESULT_PARAMETERS]
    if not criteria:
        raise Invalid(f"a search inside a Bundle needs at least one supported criterion "
                      f"({', '.join(sorted(known))})", [f"{entry.path}.request.url"])
    count = page_size(params, settings)
    if settings.principal is not None:
        refuse_chains(settings.principal, entry.res_type, criteria)
    ids = sorted(uow.search_ids(entry.res_type, criteria))
    if settings.principal is not None:  # only what the token may search, counted in total too
        access = decide(settings.principal, "s", entry.res_type).require()
        ids = sorted(reachable_ids(uow.conn, access, entry.res_type, ids))
    found = uow.read_many(entry.res_type, ids[:count])
    hits = [found[rid] for rid in ids[:count] if rid in found]
    query = urlencode(criteria + [("_count", str(count))])

    def render() -> dict:
        entries = [{"fullUrl": f"{settings.base}/{entry.res_type}/{hit.res_id}", "resource": hit.resource,
                    "search": {"mode": "match"}} for hit in hits]
        if ignored:
            entries.append(outcome_entry([Issue("not-supported", f"parameter {n!r} ignored", [n], "warning")
                                          for n in ignored]))
        return {"resourceType": "Bundle", "type": "searchset", "total": len(ids),
                "link": [{"relation": "self", "url": f"{settings.base}/{entry.res_type}?{query}"}],
                "entry": entries}
    return EntryResult(200, None, render=None if entry.method == "HEAD" else render)


def page_size(params: list[tuple[str, str]], settings) -> int:
    value = dict(params).get("_count")
    if value is None:
        return settings.default_page_size
    if not (value.isascii() and value.isdigit()):
        raise Invalid(f"_count must be a non-negative integer, got {value!r}", ["_count"])
    return min(int(value), settings.max_page_size)


def is_not_modified(entry, stored: StoredVersion) -> bool:
    """request.ifNoneMatch / ifModifiedSince on a read (http.html#cread)."""
    if entry.if_none_match:
        tags = {t.strip() for t in entry.if_none_match.split(",")}
        return "*" in tags or stored.etag in tags or stored.etag[2:] in tags
    if entry.if_modified_since:
        since = parse_instant(entry.if_modified_since)
        return since is not None and stored.last_updated.replace(microsecond=0) <= since
    return False


def parse_instant(value: str):
    """Bundle.entry.request.ifModifiedSince is a FHIR instant; an HTTP date is accepted too."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else None
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


ACTIONS = {"create": create, "matched": matched, "update": update, "patch": patch, "delete": delete,
           "none": nothing, "read": read, "vread": vread, "search": search}
