"""GET [type]?params, POST [type]/_search and GET [base]?_type=...: searchset Bundles.

HTTP only: the parameters are read here, parsed by fhirimg.search.query and run by
fhirimg.search.searchset. Prefer: handling=strict turns unknown parameters into a 400
(search.html#errors); lenient (the default) reports them in an outcome entry.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..auth.decision import decide, reachable_ids, readable, require_own_patient
from ..auth.errors import Forbidden
from ..auth.writes import refuse_chains
from ..errors import Invalid
from ..resources import SUPPORTED_TYPES
from ..search.query import SearchRequest
from ..search.searchset import SearchContext, run_search, run_system_search
from .access import current_principal
from .auditing import note_query
from .negotiation import base_url, json_response, prefer_handling
from .rest import checked_type, repository

blueprint = Blueprint("search", __name__)
COMMON_ONLY = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}
IGNORED_HERE = {"_format", "_pretty"}  # handled by content negotiation


@blueprint.route("/<res_type>", methods=["GET"])
def search_type(res_type: str) -> Response:
    checked_type(res_type)
    return searchset_response("search-type", search(res_type, list(request.args.items(multi=True))))


@blueprint.route("/<res_type>/_search", methods=["POST"])
def search_type_post(res_type: str) -> Response:
    checked_type(res_type)
    if request.mimetype != "application/x-www-form-urlencoded":
        raise Invalid("POST _search takes application/x-www-form-urlencoded parameters (http.html#search)")
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return searchset_response("search-type", search(res_type, params))


@blueprint.route("", methods=["GET"], strict_slashes=False)  # GET [base]?_type=... without a redirect
@blueprint.route("/", methods=["GET"])
def search_system() -> Response:
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in IGNORED_HERE]
    types_param = [v for k, v in params if k == "_type"]
    named = [t for value in types_param for t in value.split(",") if t]
    unknown = [t for t in named if t not in SUPPORTED_TYPES]
    if unknown:
        raise Invalid(f"_type names unsupported types: {', '.join(unknown)}", ["_type"])
    types = searchable_types(named)
    criteria = [(k, v) for k, v in params if k not in ("_type", "_cursor")]
    for name, _ in criteria:
        if not name.startswith("_") or name.split(":")[0] not in COMMON_ONLY | {"_count"}:
            raise Invalid(f"system search supports only the common parameters "
                          f"({', '.join(sorted(COMMON_ONLY))}) and _count; {name!r} is not one", [name])
    strict = prefer_handling() == "strict"
    requests = [narrowed(SearchRequest.parse(t, criteria, strict, base_url())) for t in types]
    cursor = next((v for k, v in params if k == "_cursor"), None)
    link_params = [(k, v) for k, v in params if k != "_cursor"]
    with repository().reading() as uow:
        bundle = run_system_search(uow, requests, context(), cursor, link_params)
    return searchset_response("search-system", bundle)


def searchset_response(interaction: str, bundle: dict) -> Response:
    note_query(interaction, bundle)  # one event per patient whose data the page holds
    return json_response(bundle)


def search(res_type: str, params: list[tuple[str, str]]) -> dict:
    params = [(k, v) for k, v in params if k not in IGNORED_HERE]
    search_request = narrowed(SearchRequest.parse(res_type, params, prefer_handling() == "strict", base_url()))
    with repository().reading() as uow:
        return run_search(uow, search_request, context())


def context() -> SearchContext:
    limits = current_app.config["FHIRIMG"]["limits"]
    return SearchContext(base_url(), limits["default_page_size"], limits["max_page_size"], visible_ids)


def narrowed(search_request: SearchRequest) -> SearchRequest:
    """The search limited, in SQL, to what the token may search: its patient compartment,
    its granular scopes' criteria, its client's registered patients (403 if nothing)."""
    access = decide(current_principal(), "s", search_request.res_type).require()
    require_own_patient(access, search_request.criteria)
    refuse_chains(current_principal(), search_request.res_type, search_request.criteria)
    condition = access.condition()
    if condition is not None:
        search_request.conditions.append(condition)
    return search_request


def searchable_types(named: list[str]) -> list[str]:
    """System search: the types named by _type must all be searchable (403 otherwise); with no
    _type, the types the token may search (403 if none)."""
    principal = current_principal()
    if named:
        for res_type in named:
            decide(principal, "s", res_type).require()
        return named
    allowed = [t for t in SUPPORTED_TYPES if decide(principal, "s", t).allowed]
    if not allowed:
        raise Forbidden(decide(principal, "s", SUPPORTED_TYPES[0]).reason)
    return allowed


def visible_ids(conn, res_type: str, ids: list[str]) -> set[str]:
    """Of included resources, those the token may read or search (the rest are left out)."""
    out: set[str] = set()
    for access in readable(current_principal(), res_type):
        out |= reachable_ids(conn, access, res_type, [i for i in ids if i not in out])
    return out
