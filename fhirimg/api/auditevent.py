"""``[base]/AuditEvent``: the audit trail, read and search only, and ``$verify``.

AuditEvents are written by fhirimg itself (api/auditing.py, audit/writes.py), never by a
client: create, update, patch and delete are 405. Reading needs ``system/AuditEvent.rs``,
or ``patient/AuditEvent.rs`` for the trail of the token's own patient; reading the trail
is itself audited.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..audit.chain import verify_chain
from ..audit.fold import catch_up
from ..audit.search import as_resource, parse_query, patient_condition, run_query
from ..audit.schema import audit_event
from ..auth.compartment import patient_ids
from ..auth.decision import decide
from ..auth.errors import Forbidden
from ..errors import Invalid, MethodNotAllowed, NotFound
from .access import current_principal
from .auditing import note
from .capability import operation_entries, register_operation, register_resource
from .negotiation import base_url, json_response

blueprint = Blueprint("auditevent", __name__)
VERIFY_DEFINITION = "http://fhirimg.org/fhir/OperationDefinition/AuditEvent-verify"
register_operation("verify", VERIFY_DEFINITION, ["AuditEvent"],
                   "Walk the audit trail's hash chain: result true with the count and the head hash, or "
                   "false with the first event (brokenAt) whose content, link or number does not verify.")


SEARCH_PARAMS = {
    "action": "token", "agent": "reference", "agent-role": "token", "category": "token", "code": "token",
    "date": "date", "entity": "reference", "entity-role": "token", "outcome": "token", "patient": "reference",
    "policy": "uri", "purpose": "token", "source": "reference", "_lastUpdated": "date", "_id": "token"}


def capability() -> dict:
    return {"type": "AuditEvent", "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "documentation": "Recorded by this server for every access and change (BALP-shaped, R5); "
                             "read and search only.",
            "interaction": [{"code": "read"}, {"code": "search-type"}], "versioning": "no-version",
            "readHistory": False, "updateCreate": False, "conditionalCreate": False,
            "conditionalUpdate": False, "conditionalDelete": "not-supported",
            "searchParam": [{"name": name, "type": kind,
                             **({"definition": f"http://hl7.org/fhir/SearchParameter/AuditEvent-{name}"}
                                if not name.startswith("_") else {})} for name, kind in SEARCH_PARAMS.items()],
            "operation": operation_entries("AuditEvent")}


register_resource("AuditEvent", capability)


def engine():
    return current_app.extensions["fhirimg.engine"]


def reach(letter: str):
    """The condition on audit_event this token may read or search (None: all); 403 if none.
    Patient scopes reach the events about their patient; scope criteria grant nothing here."""
    principal = current_principal()
    access = decide(principal, letter, "AuditEvent").require()
    limit = patient_ids(principal.patients, principal.organizations)
    if any(rule.patients is None and not rule.criteria for rule in access.rules):
        return None if limit is None else patient_condition(limit)
    patients = sorted({p for rule in access.rules if not rule.criteria for p in rule.patients or ()})
    if not patients:
        raise Forbidden("AuditEvent scopes with search criteria are not supported; use system/AuditEvent.rs "
                        "or patient/AuditEvent.rs with a patient context")
    condition = patient_condition(patients)
    return condition if limit is None else condition & patient_condition(limit)


@blueprint.route("/AuditEvent", methods=["GET"])
def search() -> Response:
    return searchset(list(request.args.items(multi=True)))


@blueprint.route("/AuditEvent/_search", methods=["POST"])
def search_post() -> Response:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise Invalid("POST _search takes application/x-www-form-urlencoded parameters (http.html#search)")
    return searchset(list(request.args.items(multi=True)) + list(request.form.items(multi=True)))


def searchset(params: list[tuple[str, str]]) -> Response:
    limits = current_app.config["FHIRIMG"]["limits"]
    condition = reach("s")
    query = parse_query(params, limits["default_page_size"], limits["max_page_size"], base_url())
    if query.uses_index:  # search values still to be folded in (SQLite) are written first
        catch_up(engine())
    with engine().connect() as conn:
        rows, following, total = run_query(conn, query, condition)
    base = base_url()
    kept = [(k, v) for k, v in params if k != "_cursor"]
    bundle = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": page_url(base, params)}]
    if following:
        bundle["link"].append({"relation": "next", "url": page_url(base, kept + [("_cursor", following)])})
    entries = [{"fullUrl": f"{base}/AuditEvent/{row.seq}", "resource": as_resource(*row),
                "search": {"mode": "match"}} for row in rows]
    if entries:
        bundle["entry"] = entries
    patients = sorted({entry["resource"]["patient"]["reference"][8:] for entry in entries
                       if "patient" in entry["resource"]}) or [None]
    note("search-type", patients=patients, query=request.query_string.decode("utf-8", "replace"),
         details={"searched": "AuditEvent"})
    return json_response(bundle)


def page_url(base: str, params: list[tuple[str, str]]) -> str:
    from urllib.parse import urlencode
    return f"{base}/AuditEvent" + ("?" + urlencode(params) if params else "")


@blueprint.route("/AuditEvent/<res_id>", methods=["GET", "HEAD"])
@blueprint.route("/AuditEvent/<res_id>/_history/1", methods=["GET", "HEAD"])
def read(res_id: str) -> Response:
    condition = reach("r")
    if not (res_id.isascii() and res_id.isdigit()) or len(res_id) > 18:
        raise NotFound(f"AuditEvent/{res_id[:64]} is not known")
    event = audit_event
    with engine().connect() as conn:
        row = conn.execute(event.select().where(event.c.seq == int(res_id))).first()
        if row is not None and condition is not None and \
                conn.execute(event.select().where(event.c.seq == row.seq, condition)).first() is None:
            raise Forbidden(f"AuditEvent/{res_id} is outside what the token may read")
    if row is None:
        raise NotFound(f"AuditEvent/{res_id} is not known")
    resource = as_resource(row.seq, row.recorded_ms, row.event)
    note("read", resources=[f"AuditEvent/{row.seq}"], patients=[row.patient])
    return json_response(resource, 200, {"ETag": 'W/"1"'})


@blueprint.route("/AuditEvent/$verify", methods=["GET", "POST"])
def verify() -> Response:
    if reach("r") is not None:
        raise Forbidden("verifying the whole audit trail needs unrestricted read of AuditEvent "
                        "(system/AuditEvent.rs)")
    with engine().connect() as conn:
        verdict = verify_chain(conn)
    parameters = [{"name": "result", "valueBoolean": verdict.ok}, {"name": "count", "valueInteger": verdict.count},
                  {"name": "headHash", "valueString": verdict.head_hash},
                  {"name": "anchorSeq", "valueInteger": verdict.anchor_seq}]
    if not verdict.ok:
        parameters += [{"name": "brokenAt", "valueString": str(verdict.broken_at)},
                       {"name": "reason", "valueString": verdict.reason}]
    note("operation", details={"operation": "AuditEvent/$verify", "result": "ok" if verdict.ok else "broken"})
    return json_response({"resourceType": "Parameters", "parameter": parameters})


@blueprint.route("/AuditEvent", methods=["POST", "PUT", "PATCH", "DELETE"])
@blueprint.route("/AuditEvent/<res_id>", methods=["POST", "PUT", "PATCH", "DELETE"])
@blueprint.route("/AuditEvent/<res_id>/_history/<version>", methods=["PUT", "POST", "PATCH", "DELETE"])
def refuse(res_id: str | None = None, version: str | None = None) -> Response:
    raise MethodNotAllowed("AuditEvents are recorded by this server and cannot be created, changed or deleted "
                           "by clients (read and search only)", ["GET", "HEAD"])
