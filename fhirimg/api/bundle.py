"""POST [base]: transaction and batch Bundles (http.html#transaction)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..bundle import BundleSettings, process_bundle
from ..bundle.response import response_bundle
from .access import current_principal
from .auditing import bundle_resources, note, note_read, patients_of, request_actor
from .negotiation import base_url, json_response, prefer_return, read_json_body
from .rest import repository

blueprint = Blueprint("bundle", __name__)


def bundle_settings() -> BundleSettings:
    limits = current_app.config["FHIRIMG"]["limits"]
    return BundleSettings(base=base_url(), max_entries=limits["max_bundle_entries"],
                          default_page_size=limits["default_page_size"], max_page_size=limits["max_page_size"],
                          principal=current_principal(), actor=request_actor())


# Both `[base]` and `[base]/`: clients POST to the base exactly as configured.
@blueprint.route("", methods=["POST"], strict_slashes=False)
@blueprint.route("/", methods=["POST"])
def transaction_or_batch() -> Response:
    document = read_json_body()
    settings = bundle_settings()
    parsed = process_bundle(repository(), document, settings)
    for entry in parsed.entries:
        note_entry(entry)
    return json_response(response_bundle(parsed, settings.base, prefer_return()))


WRITE_ACTIONS = {"create": "create", "update": "update", "patch": "patch", "delete": "delete"}


def note_entry(entry) -> None:
    """One event per entry that the unit of work did not record with a version: reads and
    searches, refused or failed batch entries, and writes that wrote nothing."""
    result = entry.result
    if result is None:
        return
    resource = [f"{entry.res_type}/{entry.target_id or entry.res_id}"] if (entry.target_id or entry.res_id) else []
    interaction = {"read": "read", "vread": "vread", "search": "search-type"}.get(entry.action) or \
        WRITE_ACTIONS.get(entry.action) or {"POST": "create", "PUT": "update", "PATCH": "patch",
                                            "DELETE": "delete"}.get(entry.method, "read")
    if result.error is not None:
        note(interaction, resources=resource, status=result.error.status, reason=result.error.diagnostics[:500],
             query=entry.query if interaction == "search-type" else None)
    elif entry.action in ("read", "vread") and result.stored is not None:
        note_read(entry.action, result.stored)
    elif entry.action == "search":
        note("search-type", patients=patients_of(bundle_resources(result.body or {})), query=entry.query or "")
    elif not (entry.action in WRITE_ACTIONS and result.stored is not None and result.stored.changed):
        note(interaction, resources=resource, status=result.status, details={"result": "nothing written"})


__all__ = ["blueprint"]
