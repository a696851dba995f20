"""GET [base]/_history, [base]/[type]/_history, [base]/[type]/[id]/_history (http.html#history).

Renders fhirimg.history pages as ``history`` Bundles. Paging links carry an opaque
``_cursor`` that pins the snapshot; every page also says where the *next poll* starts:

* ``Bundle.meta.lastUpdated``: lastUpdated of the snapshot's last change; every change
  committed later has a lastUpdated at or after it, so ``_since=<it>`` misses nothing
  (it may repeat changes of that very millisecond: ``_since`` is inclusive);
* the ``next-poll`` extension on Bundle.meta and the ``X-Next-Poll`` header: the URL of
  exactly the changes after this snapshot, with no repeats (R5 binds Bundle.link.relation
  to the IANA registry, which has no relation for this).
"""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request

from .. import history
from ..auth.decision import decide, require_resource, require_version
from ..auth.errors import Forbidden
from ..errors import Invalid
from ..resources import REPLICATED_BY_DEFAULT
from ..replicate.origin import origin_extension, site_id
from ..store.records import format_instant
from .access import current_principal
from .auditing import bundle_resources, note, note_query, patients_of
from .negotiation import base_url, json_response, prefer_handling
from .rest import ResourceTypeConverter, checked_type, repository

blueprint = Blueprint("history", __name__)
NEXT_POLL_EXTENSION = "https://fhirimg.org/fhir/StructureDefinition/next-poll"
SITE_HEADER = "X-Fhirimg-Site"


@blueprint.record_once
def _register_converter(state) -> None:
    # Registered before the rest blueprint, which owns the converter.
    state.app.url_map.converters.setdefault("restype", ResourceTypeConverter)


@blueprint.route("/_history", methods=["GET", "HEAD"])
def history_system() -> Response:
    return history_response(None, None)


@blueprint.route("/<restype:res_type>/_history", methods=["GET", "HEAD"])
def history_type(res_type: str) -> Response:
    return history_response(checked_type(res_type), None)


@blueprint.route("/<restype:res_type>/<res_id>/_history", methods=["GET", "HEAD"])
def history_instance(res_type: str, res_id: str) -> Response:
    from ..interactions import check_id
    checked_type(res_type)
    check_id(res_id, res_type)
    return history_response(res_type, res_id)


def history_response(res_type: str | None, res_id: str | None) -> Response:
    limits = current_app.config["FHIRIMG"]["limits"]
    params = list(request.args.items(multi=True))
    query = history.parse_history_query(params, res_type, res_id, limits["default_page_size"],
                                        limits["max_page_size"])
    if query.ignored and prefer_handling() == "strict":
        raise Invalid(f"unknown history parameters: {', '.join(query.ignored)}", query.ignored)
    with repository().reading() as uow:
        require_history_access(uow, query)
        page = history.read_history(uow.conn, query)
        if query.res_id is not None:  # instance history: each version, not only the current one
            for entry in page.entries:
                require_version(uow.conn, current_principal(), entry.version)
    links = page_links(params, page)
    bundle = history_bundle(page, links, local_site_id())
    if res_id is not None:  # the versions of one resource: a read of it
        note("history-instance", resources=[f"{res_type}/{res_id}"], patients=patients_of(bundle_resources(bundle)))
    else:  # a replication feed read by a remote site, or a client's history query
        note_query("history-type" if res_type else "history-system", bundle)
    headers = {"X-Next-Poll": links["next-poll"], SITE_HEADER: local_site_id()}
    return json_response(bundle, 200, headers)


def require_history_access(uow, query: history.HistoryQuery) -> None:
    """Instance history is a read of the resource; type and system history (replication
    feeds) need search on every type they return, unnarrowed: old versions of a resource
    are not in the index, so a patient compartment or scope criteria cannot be applied to
    them, and such a token gets 403 rather than a feed with holes."""
    principal = current_principal()
    if query.res_id is not None:
        # Asked whether or not it exists: a narrowed token learns nothing from 403 versus 404.
        require_resource(uow.conn, principal, "r", query.res_type, query.res_id)
        return
    for res_type in [query.res_type] if query.res_type else (query.types or REPLICATED_BY_DEFAULT):
        access = decide(principal, "s", res_type).require()
        if access.is_narrowed:
            raise Forbidden(f"the token may search only some {res_type} resources (patient context, scope "
                            f"criteria or registered patients); the {'type' if query.res_type else 'system'} "
                            f"history of {res_type} needs unrestricted access, e.g. system/{res_type}.rs. "
                            "Search instead, or read a resource's own _history.")


def local_site_id() -> str:
    cached = current_app.extensions.get("fhirimg.site_id")
    if cached is None:
        configured = (current_app.config["FHIRIMG"].get("sections", {}).get("replicate") or {}).get("site_id")
        cached = site_id(current_app.extensions["fhirimg.engine"], configured)
        current_app.extensions["fhirimg.site_id"] = cached
    return cached


def page_links(params: list[tuple[str, str]], page: history.HistoryPage) -> dict[str, str]:
    path = f"{base_url()}{request.path[len(current_app.config['FHIRIMG_PREFIX']):]}"
    kept = [(k, v) for k, v in params if k != "_cursor"]
    links = {"self": path + ("?" + urlencode(params) if params else "")}
    if page.next_cursor is not None:
        links["next"] = f"{path}?{urlencode(kept + [('_cursor', page.next_cursor.encode())])}"
    poll = [(k, v) for k, v in kept if k not in ("_since",)]
    links["next-poll"] = f"{path}?{urlencode(poll + [('_cursor', page.poll_cursor.encode())])}"
    return links


def history_bundle(page: history.HistoryPage, links: dict[str, str], own_site: str) -> dict:
    bundle = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": format_instant(page.watermark_ms),
                 "extension": [{"url": NEXT_POLL_EXTENSION, "valueUri": links["next-poll"]}]},
        "type": "history",
    }
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = [{"relation": rel, "url": url} for rel, url in links.items() if rel in ("self", "next")]
    bundle["entry"] = [history_entry(e, own_site) for e in page.entries]
    return bundle


def history_entry(entry: history.HistoryEntry, own_site: str) -> dict:
    v = entry.version
    out = {"extension": [origin_extension(entry.origin or own_site)],
           "fullUrl": f"{base_url()}/{v.res_type}/{v.res_id}"}
    if v.resource is not None:
        out["resource"] = v.resource
    out["request"] = {"method": v.method, "url": v.res_type if v.method == "POST" else f"{v.res_type}/{v.res_id}"}
    out["response"] = {"status": entry.status, "etag": v.etag, "lastModified": format_instant(v.last_updated_ms)}
    return out
