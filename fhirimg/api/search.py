"""GET [type]?params and POST [type]/_search: searchset Bundles."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request

from ..errors import Invalid, Issue, operation_outcome
from ..interactions import RESULT_PARAMETERS
from ..search import registry
from .negotiation import base_url, json_response, prefer_handling, read_json_body
from .rest import checked_type, repository

blueprint = Blueprint("search", __name__)


@blueprint.route("/<res_type>", methods=["GET"])
def search_type(res_type: str) -> Response:
    checked_type(res_type)
    return json_response(run_search(res_type, list(request.args.items(multi=True))))


@blueprint.route("/<res_type>/_search", methods=["POST"])
def search_type_post(res_type: str) -> Response:
    checked_type(res_type)
    if not (request.mimetype == "application/x-www-form-urlencoded"):
        raise Invalid("POST _search takes application/x-www-form-urlencoded parameters")
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return json_response(run_search(res_type, params))


def run_search(res_type: str, params: list[tuple[str, str]]) -> dict:
    known = {p.name for p in registry.parameters_for(res_type)}
    criteria, ignored = [], []
    for name, value in params:
        if name in known:
            criteria.append((name, value))
        elif name not in RESULT_PARAMETERS:
            ignored.append(name)
    if ignored and prefer_handling() == "strict":
        raise Invalid(f"unknown search parameters for {res_type}: {', '.join(ignored)}", ignored)
    count = page_size(params)
    with repository().reading() as uow:
        ids = sorted(uow.indexer.find_ids(uow.conn, res_type, criteria)) if criteria else []
        found = uow.read_many(res_type, ids[:count])
    entries = [{"fullUrl": f"{base_url()}/{res_type}/{rid}", "resource": found[rid].resource,
                "search": {"mode": "match"}} for rid in ids[:count] if rid in found]
    if ignored:
        entries.append({"resource": operation_outcome([Issue("not-supported", f"parameter {n!r} ignored",
                                                             [n], "warning") for n in ignored]),
                        "search": {"mode": "outcome"}})
    self_query = urlencode(criteria + [("_count", str(count))])
    return {"resourceType": "Bundle", "type": "searchset", "total": len(ids),
            "link": [{"relation": "self", "url": f"{base_url()}/{res_type}?{self_query}"}], "entry": entries}


def page_size(params) -> int:
    limits = current_app.config["FHIRIMG"]["limits"]
    value = dict(params).get("_count")
    if value is None:
        return limits["default_page_size"]
    if not value.isdigit():
        raise Invalid(f"_count must be a non-negative integer, got {value!r}", ["_count"])
    return min(int(value), limits["max_page_size"])
