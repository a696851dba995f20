"""Reading a batch or transaction Bundle into plain Entry records (bundle.html, http.html#transaction).

Everything here is checked before the database is touched: the Bundle's type and shape,
each entry's request (method, url, headers), fullUrls, and the entry limit. Errors name
the entry and element (`Bundle.entry[3].request.url`).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import FhirError, Invalid, Issue, TooLarge
from ..resources import SUPPORTED_TYPES, is_valid_id

PROCESSABLE_TYPES = ("transaction", "batch")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# http.html#trules: DELETE, then POST, then PUT/PATCH, then GET/HEAD.
PROCESSING_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}

BUNDLE_ELEMENTS = {"resourceType", "id", "meta", "implicitRules", "language", "identifier", "type",
                   "timestamp", "total", "link", "entry", "signature", "issues"}
ENTRY_ELEMENTS = {"id", "extension", "modifierExtension", "link", "fullUrl", "resource", "search",
                  "request", "response"}
REQUEST_ELEMENTS = {"id", "extension", "modifierExtension", "method", "url", "ifNoneMatch",
                    "ifModifiedSince", "ifMatch", "ifNoneExist"}

_UUID_URN = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_OID_URN = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+\Z")
_URI_FORBIDDEN = re.compile(r"[\s<>\"{}|\\^`]")
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}\Z")


@dataclass
class Entry:
    """One Bundle.entry with its request taken apart; filled in further while processing."""

    index: int
    method: str
    url: str
    res_type: str
    res_id: str | None = None
    version: str | None = None
    query: str | None = None
    full_url: str | None = None
    resource: dict | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    origin: str | None = None  # site that first wrote this change (replication push), if given
    # set while processing (bundle/process.py)
    if_match_version: int | None = None
    criteria: list = field(default_factory=list)  # parsed ifNoneExist / conditional url criteria
    sites: list = field(default_factory=list)  # references.ReferenceSite to rewrite
    operations: list | None = None  # PATCH: the JSON Patch document
    target_id: str | None = None
    action: str | None = None  # create | update | matched | delete | patch | read | vread | search | none
    result: object = None
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def is_conditional(self) -> bool:
        return bool(self.if_none_exist) or (self.method in ("PUT", "PATCH", "DELETE") and self.query is not None)

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class ParsedBundle:
    kind: str  # transaction | batch
    entries: list[Entry]
    size: int = 0  # number of entries in the request, parsed or not
    errors: dict[int, FhirError] = field(default_factory=dict)  # batch: entries that failed parsing


def parse_bundle(document, base: str, max_entries: int) -> ParsedBundle:
    """Check the Bundle and parse every entry. A transaction fails on the first bad entry;
    in a batch a bad entry is recorded in `errors` and the others go on."""
    kind = check_bundle(document)
    raw_entries = document.get("entry", [])
    if not isinstance(raw_entries, list):
        raise Invalid("Bundle.entry must be an array", ["Bundle.entry"], code="structure")
    if len(raw_entries) > max_entries:
        raise TooLarge(f"the Bundle has {len(raw_entries)} entries; this server accepts at most "
                       f"{max_entries} per Bundle (limits.max_bundle_entries)")
    parsed = ParsedBundle(kind, [], size=len(raw_entries))
    for index, raw in enumerate(raw_entries):
        try:
            parsed.entries.append(parse_entry(index, raw, base))
        except FhirError as error:
            if kind == "transaction":
                raise
            parsed.errors[index] = error
    return parsed


def check_bundle(document) -> str:
    if not isinstance(document, dict):
        raise Invalid("POST [base] takes a Bundle (a JSON object)", ["Bundle"], code="structure")
    res_type = document.get("resourceType")
    if res_type != "Bundle":
        raise Invalid(f"POST [base] takes a Bundle of type transaction or batch, not {res_type!r}",
                      ["Bundle.resourceType"])
    unknown = sorted(set(document) - BUNDLE_ELEMENTS)
    if unknown:
        raise Invalid(f"unknown element {unknown[0]!r} in Bundle", [f"Bundle.{unknown[0]}"], code="structure",
                      issues=[Issue("structure", f"unknown element {u!r} in Bundle", [f"Bundle.{u}"])
                              for u in unknown])
    kind = document.get("type")
    if kind not in PROCESSABLE_TYPES:
        # bundle.html#transaction: only batch and transaction Bundles ask the server to act.
        raise Invalid(f"Bundle.type {kind!r} cannot be processed at [base]: POST a Bundle of type "
                      "'transaction' or 'batch' (a document, collection, searchset, history or message "
                      "Bundle is not a set of requests)", ["Bundle.type"], code="not-supported")
    return kind


def parse_entry(index: int, raw, base: str) -> Entry:
    path = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not raw:
        raise Invalid("a Bundle entry must be a non-empty JSON object", [path], code="structure")
    unknown = sorted(set(raw) - ENTRY_ELEMENTS)
    if unknown:
        raise Invalid(f"unknown element {unknown[0]!r} in a Bundle entry", [f"{path}.{unknown[0]}"],
                      code="structure")
    request = raw.get("request")
    if request is None:
        raise Invalid("every entry of a batch or transaction needs a request (method and url)",
                      [f"{path}.request"], code="required")
    if not isinstance(request, dict):
        raise Invalid("Bundle.entry.request must be a JSON object", [f"{path}.request"], code="structure")
    check_request_elements(request, path)
    method = request.get("method")
    if method not in METHODS:
        raise Invalid(f"request.method {method!r} is not one of {', '.join(METHODS)}", [f"{path}.request.method"],
                      code="required" if method is None else "code-invalid")
    url = request.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Invalid("request.url is required (e.g. 'Patient' or 'Patient/123')", [f"{path}.request.url"],
                      code="required")
    entry = Entry(index=index, method=method, url=url, res_type="")
    parse_request_url(entry, url, base)
    entry.if_none_exist = request.get("ifNoneExist")
    entry.if_match = request.get("ifMatch")
    entry.if_none_match = request.get("ifNoneMatch")
    entry.if_modified_since = request.get("ifModifiedSince")
    entry.full_url = parse_full_url(raw.get("fullUrl"), path)
    entry.resource = raw.get("resource")
    entry.origin = parse_origin(raw.get("extension"), path)
    check_entry_semantics(entry)
    return entry


MAX_ORIGIN_CHARS = 255


def parse_origin(extensions, path: str) -> str | None:
    """The change-origin extension a replicating site puts on each entry it pushes (the id of
    the site that first wrote the change), so this site never pushes it back there."""
    from ..replicate.origin import ORIGIN_EXTENSION
    if not isinstance(extensions, list):
        return None
    for i, ext in enumerate(extensions):
        if isinstance(ext, dict) and ext.get("url") == ORIGIN_EXTENSION:
            value = ext.get("valueUri")
            if not isinstance(value, str) or not value or len(value) > MAX_ORIGIN_CHARS or any(c.isspace() for c in value):
                raise Invalid(f"the change-origin extension needs a valueUri of at most {MAX_ORIGIN_CHARS} "
                              "characters without spaces", [f"{path}.extension[{i}].valueUri"], code="value")
            return value
    return None


def check_request_elements(request: dict, path: str) -> None:
    unknown = sorted(set(request) - REQUEST_ELEMENTS)
    if unknown:
        raise Invalid(f"unknown element {unknown[0]!r} in Bundle.entry.request", [f"{path}.request.{unknown[0]}"],
                      code="structure")
    for name in ("url", "ifNoneMatch", "ifModifiedSince", "ifMatch", "ifNoneExist"):
        value = request.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise Invalid(f"request.{name} must be a non-empty string", [f"{path}.request.{name}"])


def parse_request_url(entry: Entry, url: str, base: str) -> None:
    """`Type`, `Type/id`, `Type/id/_history/vid`, `Type?query` (relative, or absolute on this base)."""
    where = [f"{entry.path}.request.url"]
    relative = url.strip()
    if "://" in relative.split("?", 1)[0]:
        if not relative.startswith(base.rstrip("/") + "/"):
            raise Invalid(f"request.url {url!r} points to another server; use a URL relative to [base]", where)
        relative = relative[len(base.rstrip("/")) + 1:]
    relative = relative.lstrip("/")
    path, sep, query = relative.partition("?")
    segments = [unquote(s) for s in path.split("/")] if path else []
    if not segments or not _TYPE_NAME.match(segments[0]):
        raise Invalid(f"request.url {url!r} must start with a resource type (e.g. 'Patient/123'); "
                      "system-level requests and operations are not supported in a Bundle", where)
    entry.res_type = segments[0]
    if entry.res_type not in SUPPORTED_TYPES:
        raise Invalid(f"request.url {url!r} names resource type {entry.res_type!r}, which this server does "
                      f"not support (supported: {', '.join(SUPPORTED_TYPES)})", where, code="not-supported")
    entry.query = query if sep else None
    rest = segments[1:]
    if len(rest) == 0:
        pass
    elif len(rest) == 1 or (len(rest) == 3 and rest[1] == "_history"):
        if rest[0].startswith(("_", "$")) or not is_valid_id(rest[0]):
            raise Invalid(f"request.url {url!r}: {rest[0][:80]!r} is not a valid resource id "
                          "(operations, _search and _history are not supported in a Bundle)", where)
        entry.res_id = rest[0]
        if len(rest) == 3:
            entry.version = rest[2]
    else:
        raise Invalid(f"request.url {url!r} is not of the form Type, Type/id, Type/id/_history/vid or "
                      "Type?criteria", where)


def parse_full_url(value, path: str) -> str | None:
    """fullUrl must be an absolute URI: urn:uuid:, urn:oid: or an absolute URL (bundle.html#bundle-unique)."""
    if value is None:
        return None
    where = [f"{path}.fullUrl"]
    if not isinstance(value, str) or not value:
        raise Invalid("fullUrl must be a non-empty string", where)
    if value.startswith("urn:uuid:"):
        if not _UUID_URN.match(value):
            raise Invalid(f"fullUrl {value[:100]!r} is not a valid urn:uuid: (urn:uuid: followed by a UUID)", where)
        uuid.UUID(value[9:])
        return value
    if value.startswith("urn:oid:"):
        if not _OID_URN.match(value):
            raise Invalid(f"fullUrl {value[:100]!r} is not a valid urn:oid: (dotted decimal numbers)", where)
        return value
    parts = urlsplit(value)
    if (_URI_FORBIDDEN.search(value) or not parts.scheme or not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*$", parts.scheme)
            or (parts.scheme in ("http", "https") and not parts.netloc)):
        raise Invalid(f"fullUrl {value[:100]!r} is not a valid absolute URI (use urn:uuid:, urn:oid: or "
                      "an absolute URL)", where)
    return value


def check_entry_semantics(entry: Entry) -> None:
    """What each method needs: a resource for POST/PUT, an id or criteria for PUT/PATCH/DELETE."""
    path = entry.path
    method = entry.method
    if method in ("POST", "PUT", "PATCH"):
        if not isinstance(entry.resource, dict):
            raise Invalid(f"a {method} entry needs a resource (the request body)", [f"{path}.resource"],
                          code="required")
    if method == "POST" and (entry.res_id or entry.query is not None):
        raise Invalid(f"POST request.url must be a resource type only (got {entry.url!r}); use "
                      "request.ifNoneExist for a conditional create", [f"{path}.request.url"])
    if method in ("PUT", "PATCH", "DELETE"):
        if entry.version:
            raise Invalid(f"{method} cannot target a version ({entry.url!r})", [f"{path}.request.url"])
        if entry.res_id is None and not entry.query:
            raise Invalid(f"{method} request.url needs an id (Type/id) or search criteria (Type?criteria)",
                          [f"{path}.request.url"])
        if entry.res_id is not None and entry.query:
            raise Invalid(f"{method} request.url has both an id and criteria", [f"{path}.request.url"])
    if method in ("POST", "PUT") and isinstance(entry.resource, dict):
        actual = entry.resource.get("resourceType")
        if actual != entry.res_type:
            raise Invalid(f"the resource is a {actual!r} but request.url names {entry.res_type!r}",
                          [f"{path}.resource.resourceType"])
    if entry.if_none_exist and method != "POST":
        raise Invalid("request.ifNoneExist applies to POST (conditional create) only",
                      [f"{path}.request.ifNoneExist"])
    if entry.if_match and method not in ("PUT", "PATCH", "DELETE"):
        raise Invalid("request.ifMatch applies to PUT, PATCH and DELETE only", [f"{path}.request.ifMatch"])
    if (entry.if_none_match or entry.if_modified_since) and method not in ("GET", "HEAD"):
        name = "ifNoneMatch" if entry.if_none_match else "ifModifiedSince"
        raise Invalid(f"request.{name} is supported on GET and HEAD only (conditional read)",
                      [f"{path}.request.{name}"], code="not-supported")
    if method in ("GET", "HEAD") and entry.version is not None and entry.query is not None:
        raise Invalid("a vread takes no search criteria", [f"{path}.request.url"])


def processing_order(entries: list[Entry]) -> list[Entry]:
    """http.html#trules order; the original order within each group (a stable sort)."""
    return sorted(entries, key=lambda e: PROCESSING_ORDER[e.method])
