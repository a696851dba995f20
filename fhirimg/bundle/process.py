"""Transaction and batch Bundles (http.html#transaction), independent of HTTP.

A transaction runs in ONE unit of work: every resource is validated once, before the
database is touched; then, inside the transaction, the identities of conditional entries
are resolved (under the same criteria locks as REST conditional writes), fullUrls and
conditional references are rewritten, and the entries run in the spec's order. Any
failure raises a FhirError naming `Bundle.entry[i]...` and nothing is written.

A batch runs each entry in its own unit of work; a failure is that entry's answer.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson
from sqlalchemy.exc import DBAPIError, OperationalError

from .. import interactions
from ..auth.decision import decide, entry_letter
from ..auth.writes import WriteGuard
from ..auth.errors import Forbidden
from .execute import EntryResult, execute_entry
from .parse import Entry, ParsedBundle, parse_bundle, processing_order
from .references import (check_local_targets, conditional_reference, find_reference_sites, is_bundle_local,
                          iter_identifiers, matches_in_memory, split_fragment, substitute_criteria, substitute_local)
from ..errors import Conflict, FhirError, Invalid, Issue, NotFound, PreconditionFailed
from ..resources import SUPPORTED_TYPES, validate_resource
from ..search.index import plain_token_criterion
from ..store import driver
from ..store.repository import Repository, UnitOfWork, new_id

JSON_PATCH = "application/json-patch+json"
# While validating, a reference to another entry stands in as `Type/<this id>` so that the
# validator checks its target type (ImagingStudy.subject may not point at an Endpoint).
PLACEHOLDER_ID = "bundle-entry"


@dataclass
class BundleSettings:
    base: str
    max_entries: int
    default_page_size: int
    max_page_size: int
    principal: object = None  # auth.principal.Principal; None: the server's own work, unchecked
    actor: object = None  # audit.events.Actor the write events name; None: this server


def process_bundle(repo: Repository, document, settings: BundleSettings) -> ParsedBundle:
    """Parse and run a transaction or batch Bundle; each entry gets its `result`."""
    parsed = parse_bundle(document, settings.base, settings.max_entries)
    if parsed.kind == "transaction":
        process_transaction(repo, parsed.entries, settings)
    else:
        process_batch(repo, parsed, settings)
    return parsed


# -- transaction ---------------------------------------------------------------------------

def process_transaction(repo: Repository, entries: list[Entry], settings: BundleSettings) -> None:
    """All or nothing (http.html#trules); raises the first failure, re-rooted at its entry."""
    for entry in entries:
        require_entry_access(entry, settings)  # one forbidden entry: 403 for the whole Bundle
    local_types = index_full_urls(entries)
    placeholders = {url: f"{res_type}/{PLACEHOLDER_ID}" for url, res_type in local_types.items()}
    for entry in entries:
        prepare_entry(entry, local_types, placeholders)
    try:
        run_transaction(repo, entries, settings)
    except (Forbidden, Conflict) as error:  # refused before commit (the write guard)
        raise located_at_entry(error, entries) from None


def run_transaction(repo: Repository, entries: list[Entry], settings: BundleSettings) -> None:
    with repo.transaction(guard=write_guard(settings), actor=settings.actor) as uow:
        targets = resolve_identities(uow, entries)
        check_overlaps(entries)
        resolve_conditional_references(uow, entries, targets)
        rewrite_local_references(entries, targets)
        try:
            for entry in processing_order(entries):
                entry.result = execute_entry(uow, entry, settings)
            uow.write_held()
        except Conflict as error:
            raise located_at_entry(error, entries) from None
        record_pushed_origins(uow, entries)


def write_guard(settings: BundleSettings) -> WriteGuard | None:
    return WriteGuard(settings.principal) if settings.principal is not None else None


def require_entry_access(entry: Entry, settings: BundleSettings) -> None:
    """403 naming the entry unless the token has a scope for what its request does."""
    if settings.principal is None:
        return
    access = decide(settings.principal, entry_letter(entry.method, entry.res_id), entry.res_type)
    if not access.allowed:
        raise Forbidden(access.reason, [f"{entry.path}.request"])


def located_at_entry(error: Conflict | Forbidden, entries: list[Entry]) -> FhirError:
    """An error about a resource found after its entry ran (a create's conflict surfacing with
    a later statement, a refusal before commit) names the entry of that resource."""
    for entry in entries:
        if error.resource is not None and error.resource == (entry.res_type, entry.target_id):
            for issue in error.issues:
                issue.expression = [f"{entry.path}.request"]
    return error


def record_pushed_origins(uow, entries: list[Entry]) -> None:
    """Versions written for entries that name their origin site are remembered with it, in
    this transaction, as a pull records what it applies (replicate/origin.py)."""
    if not any(e.origin for e in entries):
        return
    written = {id(v) for v in uow.written}
    pushed = [(e.result.stored, e.origin) for e in entries
              if e.origin and e.result is not None and id(e.result.stored) in written]
    if not pushed:
        return
    from ..replicate.origin import record_origins
    uow.flush_versions()  # assigns seq now
    record_origins(uow.conn, [{"seq": v.seq, "origin": origin, "link": "pushed-in"} for v, origin in pushed])


def index_full_urls(entries: list[Entry]) -> dict[str, str]:
    """fullUrl -> resource type of the entries that write; the same fullUrl twice is an error
    (bundle.html: fullUrl is unique within a Bundle; a resource appears in a transaction once)."""
    seen: dict[str, Entry] = {}
    types: dict[str, str] = {}
    for entry in entries:
        if entry.full_url is None:
            continue
        first = seen.get(entry.full_url)
        if first is not None:
            raise Invalid(f"fullUrl {entry.full_url!r} appears in {first.path} and {entry.path}: a resource "
                          "can appear in a transaction only once", [f"{first.path}.fullUrl", f"{entry.path}.fullUrl"],
                          code="duplicate")
        seen[entry.full_url] = entry
        if entry.is_write:
            types[entry.full_url] = entry.res_type
    return types


# -- preparing one entry (no database) ---------------------------------------------------------

def prepare_entry(entry: Entry, local_types: dict[str, str], placeholders: dict[str, str]) -> None:
    """Parse headers, criteria and PATCH bodies; validate the resource once."""
    if entry.if_match:
        entry.if_match_version = at_request(entry, "ifMatch", interactions.parse_if_match, entry.if_match)
    if entry.is_conditional:
        field = "ifNoneExist" if entry.if_none_exist else "url"
        entry.criteria = at_request(entry, field, parse_conditional_criteria, entry.if_none_exist or entry.query)
    if entry.method == "PATCH":
        entry.operations = read_patch_body(entry)
    elif entry.method in ("POST", "PUT"):
        prepare_resource(entry, local_types, placeholders)


def parse_conditional_criteria(query: str) -> list[tuple[str, str]]:
    criteria = interactions.parse_criteria(query)
    if not criteria:
        raise Invalid(f"{query!r} has no search criteria")
    return criteria


def prepare_resource(entry: Entry, local_types: dict[str, str], placeholders: dict[str, str]) -> None:
    prefix = f"{entry.path}.resource"
    if entry.method == "POST":
        # http.html#create: the server assigns the id; one in the body is ignored.
        entry.resource = {k: v for k, v in entry.resource.items() if k != "id"}
    elif entry.res_id is not None and entry.resource.get("id") != entry.res_id:
        raise Invalid(f"the resource id {entry.resource.get('id')!r} must equal the id in request.url "
                      f"{entry.res_id!r}", [f"{prefix}.id"])
    sites = find_reference_sites(entry.resource)
    check_local_targets(sites, local_types, prefix)
    substitute_local(sites, placeholders)
    try:
        validate_resource(entry.resource, entry.res_type)
    except FhirError as error:
        raise error.prefixed(prefix) from None
    entry.sites = [s for s in sites if split_fragment(s.value)[0] in local_types or conditional_reference(s.value)]


def read_patch_body(entry: Entry) -> list:
    """PATCH in a Bundle: a Binary carrying a JSON Patch document (http.html#patch)."""
    where = f"{entry.path}.resource"
    binary = entry.resource
    if binary.get("resourceType") != "Binary" or binary.get("contentType") != JSON_PATCH:
        raise Invalid(f"a PATCH entry's resource must be a Binary with contentType {JSON_PATCH!r} "
                      "(FHIRPath Patch Parameters are not supported)", [where])
    try:
        operations = orjson.loads(base64.b64decode(binary.get("data") or "", validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise Invalid("Binary.data must be base64 of a JSON Patch document", [f"{where}.data"]) from None
    if not isinstance(operations, list):
        raise Invalid("a JSON Patch document is an array of operations", [f"{where}.data"])
    return operations


def at_request(entry: Entry, field: str, parse, value):
    try:
        return parse(value)
    except FhirError as error:
        raise relocate(error, f"{entry.path}.request.{field}") from None


def relocate(error: FhirError, path: str) -> FhirError:
    """Point every issue at `path` (request-level problems have no resource element)."""
    for issue in error.issues:
        issue.expression = [path]
    return error


# -- identities (inside the transaction) ----------------------------------------------------------

def resolve_identities(uow: UnitOfWork, entries: list[Entry]) -> dict[str, str | None]:
    """Decide what every write entry targets; returns fullUrl -> `Type/id` (None: no target)."""
    targets: dict[str, str | None] = {}
    for entry in entries:
        assign_plain_identity(entry)
        if entry.full_url and entry.is_write:
            targets[entry.full_url] = None if entry.is_conditional else f"{entry.res_type}/{entry.target_id}"
    conditional = order_by_dependencies([e for e in entries if e.is_conditional], targets)
    matches = find_independent_matches(uow, [e for e in conditional if not substitute_criteria(e.criteria, targets)[1]])
    for entry in conditional:
        criteria, depends = substitute_criteria(entry.criteria, targets)
        if entry.index not in matches:
            lock_criteria(uow, [(entry.res_type, criteria)])
            matches[entry.index] = search_at(uow, entry, criteria)
        resolve_conditional_entry(uow, entry, matches[entry.index])
        if entry.full_url:
            targets[entry.full_url] = f"{entry.res_type}/{entry.target_id}" if entry.target_id else None
    return targets


def find_independent_matches(uow: UnitOfWork, entries: list[Entry]) -> dict[int, list[str]]:
    """Matches of the conditions that name no other entry.

    A condition that already matches a stored resource needs no lock: that resource cannot
    be created twice, and a concurrent change of it fails our compare-and-set (409). Only
    conditions that match nothing - the ones that may create - are locked (all at once, in
    one global order, so concurrent bundles queue instead of deadlocking) and searched
    again, now seeing whatever a concurrent creator committed. An EHR naming the same
    archive Endpoint in every Bundle therefore does not serialise all its pushes.
    """
    matches = search_many(uow, entries)
    creating = [e for e in entries if not matches[e.index]]
    if creating and lock_criteria(uow, [(e.res_type, e.criteria) for e in creating]):
        matches.update(search_many(uow, creating))
    return matches


def search_many(uow: UnitOfWork, entries: list[Entry]) -> dict[int, list[str]]:
    """Each entry's own condition. Plain ``system|code`` tokens, which cannot be refused, are
    searched together; any other condition on its own, so that an error names its entry."""
    plain = [e for e in entries if e.criteria and plain_token_criterion(e.res_type, e.criteria) is not None]
    batched = {e.index for e in plain} if len(plain) > 1 else set()
    matches = {e.index: search_at(uow, e, e.criteria) for e in entries if e.index not in batched}
    if batched:
        found = uow.search_ids_many([(e.res_type, e.criteria) for e in plain])
        matches.update({e.index: ids for e, ids in zip(plain, found)})
    return matches


def lock_criteria(uow: UnitOfWork, conditions: list[tuple[str, list[tuple[str, str]]]]) -> bool:
    """PostgreSQL: the advisory locks REST conditional writes take (interactions.lock_criteria),
    several in one round trip and in sorted order. SQLite needs none: its write lock is held
    from BEGIN IMMEDIATE. Returns whether anything was locked."""
    if uow.conn.dialect.name != "postgresql" or not conditions:
        return False
    keys = sorted({interactions.criteria_lock_id(res_type, criteria) for res_type, criteria in conditions})
    driver.run(uow.conn, "SELECT pg_advisory_xact_lock(CAST(k AS bigint)) FROM json_array_elements_text(%s::json) AS k",
               (driver.json_rows(keys),))
    return True


def search_at(uow: UnitOfWork, entry: Entry, criteria: list[tuple[str, str]]) -> list[str]:
    try:
        return uow.search_ids(entry.res_type, criteria)
    except FhirError as error:
        raise relocate(error, condition_path(entry)) from None


def condition_path(entry: Entry) -> str:
    return f"{entry.path}.request.{'ifNoneExist' if entry.if_none_exist else 'url'}"


def assign_plain_identity(entry: Entry) -> None:
    if entry.method == "POST":
        entry.target_id, entry.action = new_id(), "create"
    elif entry.method in ("PUT", "PATCH", "DELETE") and entry.res_id is not None:
        entry.target_id = entry.res_id
        entry.action = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[entry.method]
    elif entry.method in ("GET", "HEAD"):
        entry.action = "vread" if entry.version else "read" if entry.res_id else "search"


def lock_key(entry: Entry) -> str:
    return entry.res_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(entry.criteria))


def order_by_dependencies(conditional: list[Entry], targets: dict[str, str | None]) -> list[Entry]:
    """Conditional entries whose criteria name another conditional entry's fullUrl run after
    it; a cycle can never be resolved and fails the transaction."""
    by_url = {e.full_url: e for e in conditional if e.full_url}
    ordered: list[Entry] = []
    state: dict[int, str] = {}

    def visit(entry: Entry, chain: list[Entry]) -> None:
        if state.get(entry.index) == "done":
            return
        if state.get(entry.index) == "visiting":
            cycle = chain[chain.index(entry):] + [entry]
            raise Invalid("circular conditional references: " + " -> ".join(e.path for e in cycle)
                          + " each need the other's identity first", issues=[
                              Issue("invalid", f"circular conditional reference involving {e.path}",
                                    [f"{e.path}.request"]) for e in cycle[:-1]])
        state[entry.index] = "visiting"
        for url in substitute_criteria(entry.criteria, targets)[1]:
            if url in by_url:
                visit(by_url[url], chain + [entry])
        state[entry.index] = "done"
        ordered.append(entry)

    for entry in conditional:
        visit(entry, [])
    return ordered


def resolve_conditional_entry(uow: UnitOfWork, entry: Entry, matches: list[str]) -> None:
    where = condition_path(entry)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria {lock_key(entry)!r} match {len(matches)} resources; "
                                 "a conditional operation needs at most one", [where])
    match = matches[0] if matches else None
    if entry.method == "POST":
        if match:
            entry.target_id, entry.action = match, "matched"
    elif entry.method == "PUT":
        resolve_conditional_put(uow, entry, match)
    elif entry.method == "PATCH":
        if match is None:
            raise NotFound(f"no {entry.res_type} matches the conditional patch criteria", [where])
        entry.target_id, entry.action = match, "patch"
    else:
        entry.target_id, entry.action = match, ("delete" if match else "none")


def resolve_conditional_put(uow: UnitOfWork, entry: Entry, match: str | None) -> None:
    """http.html#cond-update: one match is updated; none creates (with the body's id if any)."""
    body_id = entry.resource.get("id")
    if match:
        if body_id and body_id != match:
            raise Invalid(f"the resource id {body_id!r} differs from the matching resource {match!r}",
                          [f"{entry.path}.resource.id"])
        entry.target_id, entry.action = match, "update"
    elif body_id:
        current = uow.read(entry.res_type, body_id)
        if current is not None and not current.is_deleted:
            raise PreconditionFailed(f"{entry.res_type}/{body_id} exists but does not match the criteria",
                                     [f"{entry.path}.request.url"])
        entry.target_id, entry.action = body_id, "update"
    else:
        entry.target_id, entry.action = new_id(), "create"


def check_overlaps(entries: list[Entry]) -> None:
    """http.html#trules: identities (also resolved ones) may not overlap in DELETE/POST/PUT/PATCH."""
    seen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        if not entry.is_write or entry.target_id is None:
            continue
        key = (entry.res_type, entry.target_id)
        if key in seen:
            raise duplicate_target(seen[key], entry, f"{entry.res_type}/{entry.target_id}")
        seen[key] = entry
    written = WrittenResources(entries)
    for entry in entries:
        if entry.is_conditional and entry.action == "create":
            check_no_twin(entry, written)


def check_no_twin(entry: Entry, written: "WrittenResources") -> None:
    """Two entries that would both create the resource one conditional entry looks for."""
    for other in written.candidates(entry.res_type, entry.criteria):
        if other is not entry and matches_in_memory(other.resource, other.target_id, entry.criteria):
            raise duplicate_target(entry, other, f"the {entry.res_type} matching {lock_key(entry)!r}")


class WrittenResources:
    """The entries whose resource this Bundle writes, by type and by identifier, so that
    matching conditions against them stays linear in the size of the Bundle."""

    def __init__(self, entries: list[Entry]):
        self.entries = [e for e in entries if e.action in ("create", "update") and e.resource is not None]
        self.by_type: dict[str, list[Entry]] = {}
        self.by_token: dict[tuple, list[Entry]] = {}
        for entry in self.entries:
            self.by_type.setdefault(entry.res_type, []).append(entry)
            self.by_token.setdefault((entry.res_type, "_id", entry.target_id), []).append(entry)
            for ident in iter_identifiers(entry.resource):
                value = ident.get("value")
                if isinstance(value, str):
                    self.by_token.setdefault((entry.res_type, ident.get("system"), value), []).append(entry)
                    self.by_token.setdefault((entry.res_type, "*", value), []).append(entry)

    def candidates(self, res_type: str, criteria: list[tuple[str, str]]) -> list[Entry]:
        """A superset of the entries that can match `criteria` (callers still match each)."""
        for name, value in criteria:
            if "," in value:
                continue
            if name == "_id":
                return self.by_token.get((res_type, "_id", value), [])
            if name == "identifier":
                system, sep, code = value.partition("|")
                if not sep:
                    return self.by_token.get((res_type, "*", value), [])
                if system and code:
                    return self.by_token.get((res_type, system, code), [])
        return self.by_type.get(res_type, [])


def duplicate_target(first: Entry, second: Entry, what: str) -> FhirError:
    return Invalid(f"{first.path} and {second.path} both resolve to {what}: a resource can appear in a "
                   "transaction only once", [f"{first.path}.request", f"{second.path}.request"], code="duplicate")


# -- references (inside the transaction) -------------------------------------------------------------

def resolve_conditional_references(uow: UnitOfWork, entries: list[Entry], targets: dict[str, str | None]) -> None:
    """`Patient?identifier=...` references: exactly one match, counting the store as it is in
    this transaction and the resources this Bundle writes (http.html#trules)."""
    written = WrittenResources(entries)
    replaced = {(e.res_type, e.target_id) for e in entries if e.action in ("update", "delete")}
    resolved: dict[str, str] = {}
    for entry in written.entries:
        for site in entry.sites:
            found = conditional_reference(site.value)
            if found is None:
                continue
            if site.value not in resolved:
                where = site.element_path(f"{entry.path}.resource")
                resolved[site.value] = resolve_conditional_reference(uow, found, written, replaced, targets, where)
            site.holder["reference"] = resolved[site.value]


def resolve_conditional_reference(uow: UnitOfWork, found: tuple[str, str], written: WrittenResources,
                                  replaced: set, targets: dict, where: str) -> str:
    res_type, query = found
    if res_type not in SUPPORTED_TYPES:
        raise Invalid(f"conditional reference to unsupported type {res_type!r}", [where], code="not-supported")
    try:
        criteria, _ = substitute_criteria(interactions.parse_criteria(query), targets)
        ids = {rid for rid in uow.search_ids(res_type, criteria) if (res_type, rid) not in replaced}
    except FhirError as error:
        raise relocate(error, where) from None
    for other in written.candidates(res_type, criteria):
        matched = matches_in_memory(other.resource, other.target_id, criteria)
        if matched is None:
            raise Invalid(f"the conditional reference {res_type}?{query} uses criteria that cannot be matched "
                          f"against the {res_type} written by {other.path} (use identifier or _id)", [where],
                          code="not-supported")
        if matched:
            ids.add(other.target_id)
    if not ids:
        # http.html#trules: "if there are no matches ... the transaction fails"
        raise Invalid(f"the conditional reference {res_type}?{query} matches no resource", [where], code="not-found")
    if len(ids) > 1:
        raise PreconditionFailed(f"the conditional reference {res_type}?{query} matches {len(ids)} resources; "
                                 "it must match exactly one", [where])
    return f"{res_type}/{ids.pop()}"


def rewrite_local_references(entries: list[Entry], targets: dict[str, str | None]) -> None:
    for entry in entries:
        if entry.action not in ("create", "update"):
            continue
        for site in entry.sites:
            target, fragment = split_fragment(site.value)
            if target in targets:
                if targets[target] is None:
                    raise Invalid(f"reference {site.value!r} names an entry that resolves to no resource",
                                  [site.element_path(f"{entry.path}.resource")], code="not-found")
                site.holder["reference"] = targets[target] + fragment


# -- batch ---------------------------------------------------------------------------------------

def process_batch(repo: Repository, parsed: ParsedBundle, settings: BundleSettings) -> None:
    """Each entry in its own transaction (http.html#brules); a failure is that entry's answer."""
    for entry in processing_order(parsed.entries):
        try:
            run_batch_entry(repo, entry, settings)
        except FhirError as error:
            entry.result = EntryResult(error.status, error=error)
        except OperationalError:
            entry.result = EntryResult(503, error=FhirError(503, "transient", "the database is busy; retry this entry"))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", "") not in ("40001", "40P01"):
                raise
            entry.result = EntryResult(409, error=FhirError(409, "conflict", "a concurrent transaction conflicted; retry"))


def run_batch_entry(repo: Repository, entry: Entry, settings: BundleSettings) -> None:
    require_entry_access(entry, settings)
    if entry.resource is not None and entry.method in ("POST", "PUT"):
        refuse_references_between_entries(entry)
    prepare_entry(entry, {}, {})
    if entry.method in ("GET", "HEAD"):
        with repo.reading() as uow:
            assign_plain_identity(entry)
            entry.result = execute_entry(uow, entry, settings)
        return
    try:
        run_batch_write(repo, entry, settings)
    except (Forbidden, Conflict) as error:
        raise located_at_entry(error, [entry]) from None


def run_batch_write(repo: Repository, entry: Entry, settings: BundleSettings) -> None:
    with repo.transaction(guard=write_guard(settings), actor=settings.actor) as uow:
        resolve_identities(uow, [entry])
        resolve_conditional_references(uow, [entry], {})
        try:
            entry.result = execute_entry(uow, entry, settings)
            uow.write_held()
        except Conflict as error:
            raise located_at_entry(error, [entry]) from None
        record_pushed_origins(uow, [entry])


def refuse_references_between_entries(entry: Entry) -> None:
    # http.html#brules: references from one batch entry to another are non-conformant.
    for site in find_reference_sites(entry.resource):
        if is_bundle_local(split_fragment(site.value)[0]):
            raise Invalid(f"reference {site.value!r}: entries of a batch are independent and cannot "
                          "reference each other; send a transaction Bundle",
                          [site.element_path(f"{entry.path}.resource")], code="not-found")
