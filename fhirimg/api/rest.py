"""The RESTful API of http.html for the supported types: CRUD, vread, conditional, PATCH."""
from __future__ import annotations

from email.utils import parsedate_to_datetime

from flask import Blueprint, Response, current_app, request
from werkzeug.routing import BaseConverter

from .. import interactions
from ..auth.decision import decide, require_resource, require_version
from ..errors import MethodNotAllowed, NotFound, informational_outcome
from ..resources import SUPPORTED_TYPES, validate_resource
from .access import current_principal, write_guard
from .auditing import audited_transaction, note_read
from .negotiation import (JSON_PATCH, JSON_TYPES, empty_response, json_response, read_json_body,
                          version_headers, write_response)

blueprint = Blueprint("rest", __name__)


class ResourceTypeConverter(BaseConverter):
    """A path segment that can name a resource type (starts upper-case).

    Without it `DELETE [base]/metadata` would be routed to conditional delete of a type
    called "metadata" (404) instead of being a 405 on the metadata endpoint. Unsupported
    but well-formed type names still reach the views, whose 404 names the type.
    """

    regex = r"[A-Z][A-Za-z]{0,63}"


@blueprint.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters.setdefault("restype", ResourceTypeConverter)


def repository():
    return current_app.extensions["fhirimg.repository"]


def checked_type(res_type: str, letter: str | None = None) -> str:
    """The type, if supported; with `letter` (c r u d s), 403 unless the token may do that on it."""
    if res_type not in SUPPORTED_TYPES:
        raise NotFound(f"resource type {res_type!r} is not supported here "
                       f"(supported: {', '.join(SUPPORTED_TYPES)})")
    if letter is not None:
        decide(current_principal(), letter, res_type).require()
    return res_type


def transaction():
    """A write transaction whose every change the request's principal is checked for (and
    whose write AuditEvents name the request's client)."""
    return audited_transaction(repository(), write_guard())


@blueprint.route("/<restype:res_type>", methods=["POST"])
def create(res_type: str) -> Response:
    checked_type(res_type, "c")
    body = read_json_body()
    validate_resource(body, res_type)  # before the transaction: see interactions.create
    with transaction() as uow:
        result = interactions.create(uow, res_type, body, request.headers.get("If-None-Exist"), validated=True)
    return write_response(result.stored, result.status, result.diagnostics)


@blueprint.route("/<restype:res_type>", methods=["PUT"])
def conditional_update(res_type: str) -> Response:
    checked_type(res_type, "u")
    body = read_json_body()
    validate_resource(body, res_type)
    if_match = interactions.parse_if_match(request.headers.get("If-Match"))
    with transaction() as uow:
        result = interactions.conditional_update(uow, res_type, request.query_string.decode(), body, if_match,
                                                 validated=True)
    return write_response(result.stored, result.status, result.diagnostics)


@blueprint.route("/<restype:res_type>", methods=["DELETE"])
def conditional_delete(res_type: str) -> Response:
    checked_type(res_type, "d")
    with transaction() as uow:
        result = interactions.conditional_delete(uow, res_type, request.query_string.decode())
    return delete_response(result)


@blueprint.route("/<restype:res_type>", methods=["PATCH"])
def conditional_patch(res_type: str) -> Response:
    checked_type(res_type, "u")
    operations = read_json_body({JSON_PATCH})
    if_match = interactions.parse_if_match(request.headers.get("If-Match"))
    with transaction() as uow:
        result = interactions.conditional_patch(uow, res_type, request.query_string.decode(), operations, if_match)
    return write_response(result.stored, result.status)


@blueprint.route("/<restype:res_type>/<res_id>", methods=["GET", "HEAD"])
def read(res_type: str, res_id: str) -> Response:
    checked_type(res_type)
    interactions.check_id(res_id, res_type)
    with repository().reading() as uow:
        require_resource(uow.conn, current_principal(), "r", res_type, res_id)
        stored = interactions.read(uow, res_type, res_id).stored
    note_read("read", stored)
    if is_not_modified(stored):
        return empty_response(304, version_headers(stored))
    return json_response(stored.resource, 200, version_headers(stored))


@blueprint.route("/<restype:res_type>/<res_id>", methods=["PUT"])
def update(res_type: str, res_id: str) -> Response:
    checked_type(res_type, "u")
    interactions.check_id(res_id, res_type)
    body = read_json_body()
    validate_resource(body, res_type)
    if_match = interactions.parse_if_match(request.headers.get("If-Match"))
    with transaction() as uow:
        result = interactions.update(uow, res_type, res_id, body, if_match, validated=True)
    return write_response(result.stored, result.status)


@blueprint.route("/<restype:res_type>/<res_id>", methods=["PATCH"])
def patch(res_type: str, res_id: str) -> Response:
    checked_type(res_type, "u")
    interactions.check_id(res_id, res_type)
    operations = read_json_body({JSON_PATCH})
    if_match = interactions.parse_if_match(request.headers.get("If-Match"))
    with transaction() as uow:
        result = interactions.patch(uow, res_type, res_id, operations, if_match)
    return write_response(result.stored, result.status)


@blueprint.route("/<restype:res_type>/<res_id>", methods=["DELETE"])
def delete(res_type: str, res_id: str) -> Response:
    checked_type(res_type, "d")
    interactions.check_id(res_id, res_type)
    if_match = interactions.parse_if_match(request.headers.get("If-Match"))
    with transaction() as uow:
        result = interactions.delete(uow, res_type, res_id, if_match)
    return delete_response(result)


@blueprint.route("/<restype:res_type>/<res_id>/_history/<version>", methods=["GET", "HEAD"])
def vread(res_type: str, res_id: str, version: str) -> Response:
    checked_type(res_type)
    interactions.check_id(res_id, res_type)
    with repository().reading() as uow:
        require_resource(uow.conn, current_principal(), "r", res_type, res_id)
        stored = interactions.vread(uow, res_type, res_id, version).stored
        require_version(uow.conn, current_principal(), stored)
    note_read("vread", stored)
    return json_response(stored.resource, 200, version_headers(stored))


@blueprint.route("/<restype:res_type>/<res_id>/_history/<version>", methods=["PUT", "POST", "DELETE", "PATCH"])
def vread_other_methods(res_type: str, res_id: str, version: str) -> Response:
    raise MethodNotAllowed(f"{request.method} is not allowed on a version; only GET", ["GET", "HEAD"])


def delete_response(result: interactions.Result) -> Response:
    stored = result.stored
    headers = {"ETag": stored.etag} if stored is not None and stored.is_deleted else {}
    if request.headers.get("Prefer", "").replace(" ", "").lower().find("return=minimal") >= 0:
        return empty_response(204, headers)
    return json_response(informational_outcome(result.diagnostics or "deleted"), 200, headers)


def is_not_modified(stored) -> bool:
    """Conditional read: If-None-Match on the ETag, or If-Modified-Since (http.html#cread)."""
    none_match = request.headers.get("If-None-Match")
    if none_match:
        tags = {t.strip() for t in none_match.split(",")}
        return "*" in tags or stored.etag in tags or stored.etag[2:] in tags
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            return stored.last_updated.replace(microsecond=0) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False  # an unparseable date is ignored, as RFC 9110 says
    return False


__all__ = ["blueprint", "JSON_TYPES"]
