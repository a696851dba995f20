"""The FHIR RESTful interactions (http.html) on one unit of work, independent of HTTP.

The REST views run each call in its own database transaction; transaction Bundles run
many of them in one. Every function validates what it is given and raises FhirError.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import jsonpatch
from jsonpointer import JsonPointerException

from .errors import FhirError, Gone, Invalid, NotFound, PreconditionFailed, Unprocessable
from .requestlimits import check_search_parameters
from .resources import is_valid_id, validate_resource
from .store.records import StoredVersion
from .store.repository import UnitOfWork

_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_TYPE_PREFIX = re.compile(r"^[A-Z][A-Za-z]{0,63}\?")

# Parameters that shape a response and never select resources (search.html#all).
RESULT_PARAMETERS = {"_format", "_pretty", "_summary", "_elements", "_count", "_sort", "_total",
                     "_include", "_revinclude", "_contained", "_containedType"}


@dataclass
class Result:
    """What an interaction did: the HTTP status and the version it produced or found."""

    status: int
    stored: StoredVersion | None = None
    diagnostics: str | None = None


def parse_criteria(query: str) -> list[tuple[str, str]]:
    """`identifier=a|b&_id=x` (or `Type?...`, or a full URL) as (name, value) pairs.

    Only a leading scheme or type makes it a URL: a criterion value may itself be a URL
    (`identifier=http://hospital.example.org/mrn|123`).
    """
    if _ABSOLUTE_URL.match(query):
        query = urlsplit(query).query
    elif _TYPE_PREFIX.match(query):
        query = query.split("?", 1)[1]
    elif query.startswith("?"):
        query = query[1:]
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in RESULT_PARAMETERS]
    check_search_parameters(pairs)
    for name, value in pairs:
        if not value:
            raise Invalid(f"search criterion {name!r} has no value", [name])
    return pairs


def read(uow: UnitOfWork, res_type: str, res_id: str) -> Result:
    stored = uow.read(res_type, res_id)
    if stored is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    if stored.is_deleted:
        raise Gone(f"{res_type}/{res_id} was deleted (version {stored.version})",
                   headers={"ETag": stored.etag})
    return Result(200, stored)


def vread(uow: UnitOfWork, res_type: str, res_id: str, version: str) -> Result:
    if not (version.isascii() and version.isdigit()) or len(version) > 18:
        raise NotFound(f"version {version!r} is not a version of {res_type}/{res_id}: versions are numbers")
    stored = uow.vread(res_type, res_id, int(version))
    if stored is None:
        raise NotFound(f"{res_type}/{res_id} has no version {version}")
    if stored.is_deleted:
        raise Gone(f"version {version} of {res_type}/{res_id} is a delete", headers={"ETag": stored.etag})
    return Result(200, stored)


def create(uow: UnitOfWork, res_type: str, body, if_none_exist: str | None = None, *,
           validated: bool = False) -> Result:
    """POST [type]: the server assigns the id; a client id in the body is ignored.

    `validated=True`: the caller has run validate_resource already, outside the database
    transaction (on SQLite the write lock is taken at BEGIN, so validating inside it
    would serialise the CPU work of every writer)."""
    if not validated:
        validate_resource(body, res_type)
    if if_none_exist:
        criteria = parse_criteria(if_none_exist)
        lock_criteria(uow, res_type, criteria)
        matches = uow.search_ids(res_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(f"If-None-Exist criteria match {len(matches)} {res_type} resources",
                                     ["If-None-Exist"])
        if matches:
            if uow.guard is not None:  # the answer shows the matched resource: that is a read
                uow.guard.before_reveal(uow, res_type, matches[0])
            return Result(200, uow.read(res_type, matches[0]), "matched an existing resource; nothing created")
    resource = {k: v for k, v in body.items() if k != "id"}
    return Result(201, uow.create(res_type, resource))


def update(uow: UnitOfWork, res_type: str, res_id: str, body, if_match: int | None = None, *,
           validated: bool = False) -> Result:
    """PUT [type]/[id]: new version, or update-as-create with the client's id."""
    if not validated:
        validate_resource(body, res_type)
    if body.get("id") != res_id:
        raise Invalid(f"the resource id {body.get('id')!r} must equal the id in the URL {res_id!r}",
                      [f"{res_type}.id"])
    stored = uow.update(res_type, res_id, body, if_match)
    return Result(201 if stored.created else 200, stored)


def conditional_update(uow: UnitOfWork, res_type: str, query: str, body, if_match: int | None = None, *,
                       validated: bool = False) -> Result:
    """PUT [type]?criteria (http.html#cond-update)."""
    if not validated:
        validate_resource(body, res_type)
    criteria = parse_criteria(query)
    if not criteria:
        raise Invalid("a conditional update needs search criteria in the URL")
    lock_criteria(uow, res_type, criteria)
    matches = uow.search_ids(res_type, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria match {len(matches)} {res_type} resources")
    body_id = body.get("id")
    if matches:
        if body_id and body_id != matches[0]:
            raise Invalid(f"the resource id {body_id!r} differs from the matching resource {matches[0]!r}",
                          [f"{res_type}.id"])
        return update(uow, res_type, matches[0], {**body, "id": matches[0]}, if_match, validated=True)
    if body_id:
        if uow.read(res_type, body_id) is not None and not uow.read(res_type, body_id).is_deleted:
            raise PreconditionFailed(f"{res_type}/{body_id} exists but does not match the criteria")
        return update(uow, res_type, body_id, body, if_match, validated=True)
    return Result(201, uow.create(res_type, body, method="PUT"))


def patch(uow: UnitOfWork, res_type: str, res_id: str, operations, if_match: int | None = None) -> Result:
    """PATCH with a JSON Patch document (RFC 6902); the result must be a valid resource."""
    current = read(uow, res_type, res_id).stored
    uow.check_change(current, "u")  # before the patch is applied: a `test` op would tell values
    if if_match is not None and current.version != if_match:
        raise PreconditionFailed(f"If-Match expects version {if_match} but {res_type}/{res_id} "
                                 f"is at version {current.version}")
    patched = apply_json_patch(current.resource, operations)
    if patched.get("id") != res_id or patched.get("resourceType") != res_type:
        raise Unprocessable("a patch may not change the resource's id or resourceType", [f"{res_type}.id"])
    validate_resource(patched, res_type)
    stored = uow.update(res_type, res_id, patched, current.version, method="PATCH")
    return Result(200, stored)


def conditional_patch(uow: UnitOfWork, res_type: str, query: str, operations,
                      if_match: int | None = None) -> Result:
    """PATCH [type]?criteria (http.html#patch): no match is 404, several are 412."""
    criteria = parse_criteria(query)
    if not criteria:
        raise Invalid("a conditional patch needs search criteria in the URL")
    matches = uow.search_ids(res_type, criteria)
    if not matches:
        raise NotFound(f"no {res_type} matches the conditional patch criteria")
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria match {len(matches)} {res_type} resources; "
                                 "a conditional patch needs exactly one")
    return patch(uow, res_type, matches[0], operations, if_match)


def apply_json_patch(resource: dict, operations) -> dict:
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise Invalid("a JSON Patch document is an array of operation objects", ["Patch"])
    try:
        return jsonpatch.JsonPatch(operations).apply(resource, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Unprocessable(f"JSON Patch test failed: {exc}", ["Patch"]) from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise Invalid(f"invalid JSON Patch: {exc}", ["Patch"]) from None
    except (jsonpatch.JsonPatchConflict, JsonPointerException) as exc:
        raise Unprocessable(f"JSON Patch cannot be applied: {exc}", ["Patch"]) from None


def delete(uow: UnitOfWork, res_type: str, res_id: str, if_match: int | None = None) -> Result:
    stored = uow.delete(res_type, res_id, if_match)
    if stored is None:
        return Result(200, None, f"{res_type}/{res_id} does not exist; nothing to delete")
    if not stored.changed:
        return Result(200, stored, f"{res_type}/{res_id} was already deleted")
    return Result(200, stored, f"deleted {res_type}/{res_id}")


def conditional_delete(uow: UnitOfWork, res_type: str, query: str) -> Result:
    """DELETE [type]?criteria: single-match mode (several matches is 412)."""
    criteria = parse_criteria(query)
    if not criteria:
        raise Invalid("a conditional delete needs search criteria in the URL")
    lock_criteria(uow, res_type, criteria)
    matches = uow.search_ids(res_type, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria match {len(matches)} {res_type} resources; "
                                 "conditional delete removes one at a time")
    if not matches:
        return Result(200, None, "no resource matches the criteria; nothing deleted")
    return delete(uow, res_type, matches[0])


def lock_criteria(uow: UnitOfWork, res_type: str, criteria: list[tuple[str, str]]) -> None:
    """Serialise conditional writes with the same criteria, so that 8 clients re-pushing the
    same study at once create it exactly once (on SQLite the write lock already does)."""
    if uow.conn.dialect.name != "postgresql":
        return
    from sqlalchemy import text
    uow.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": criteria_lock_id(res_type, criteria)})


def criteria_lock_id(res_type: str, criteria: list[tuple[str, str]]) -> int:
    """The advisory lock id of a condition (shared by REST and Bundle conditional writes)."""
    key = res_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(criteria))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def parse_if_match(value: str | None) -> int | None:
    """`W/"3"` or `"3"` → 3 (http.html#concurrency)."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"If-Match must be an ETag like W/\"3\", got {value!r}", ["If-Match"])
    return int(text)


def check_id(res_id: str, res_type: str) -> None:
    if not is_valid_id(res_id):
        raise Invalid(f"{res_id[:80]!r} is not a valid resource id (1-64 of A-Z a-z 0-9 - .)",
                      [f"{res_type}.id"])


__all__ = ["Result", "FhirError", "read", "vread", "create", "update", "conditional_update", "patch",
           "conditional_patch",
           "delete", "conditional_delete", "parse_criteria", "parse_if_match", "check_id"]
