"""POST [base]: transaction and batch Bundles (http.html#transaction)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..bundle import BundleSettings, process_bundle
from ..bundle_response import response_bundle
from .access import current_principal
from .negotiation import base_url, json_response, prefer_return, read_json_body
from .rest import repository

blueprint = Blueprint("bundle", __name__)


def bundle_settings() -> BundleSettings:
    limits = current_app.config["FHIRIMG"]["limits"]
    return BundleSettings(base=base_url(), max_entries=limits["max_bundle_entries"],
                          default_page_size=limits["default_page_size"], max_page_size=limits["max_page_size"],
                          principal=current_principal())


# Both `[base]` and `[base]/`: clients POST to the base exactly as configured.
@blueprint.route("", methods=["POST"], strict_slashes=False)
@blueprint.route("/", methods=["POST"])
def transaction_or_batch() -> Response:
    document = read_json_body()
    settings = bundle_settings()
    parsed = process_bundle(repository(), document, settings)
    return json_response(response_bundle(parsed, settings.base, prefer_return()))


__all__ = ["blueprint"]
