"""GET [base]/metadata: a CapabilityStatement generated from what is actually registered.

Interactions are read off the Flask URL map, search parameters off the search registry
and operations off the operation registry: nothing here is kept by hand.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from flask import Blueprint, Response, current_app, request

from .. import FHIR_VERSION, __version__
from ..resources import SUPPORTED_TYPES
from ..search import registry as search_registry
from .negotiation import base_url, json_response

blueprint = Blueprint("capability", __name__)


@blueprint.record_once
def _remember_start(state) -> None:
    # CapabilityStatement.date: when this instance's capabilities were fixed (at start-up).
    state.app.config.setdefault("FHIRIMG_STARTED", datetime.now(timezone.utc).isoformat(timespec="seconds"))

# (rule below the FHIR base, method) -> interaction code (CapabilityStatement.rest.resource.interaction)
TYPE_INTERACTIONS = {
    ("/<res_type>/<res_id>", "GET"): "read",
    ("/<res_type>/<res_id>/_history/<version>", "GET"): "vread",
    ("/<res_type>/<res_id>", "PUT"): "update",
    ("/<res_type>/<res_id>", "PATCH"): "patch",
    ("/<res_type>/<res_id>", "DELETE"): "delete",
    ("/<res_type>/<res_id>/_history", "GET"): "history-instance",
    ("/<res_type>/_history", "GET"): "history-type",
    ("/<res_type>", "POST"): "create",
    ("/<res_type>", "GET"): "search-type",
}
SYSTEM_INTERACTIONS = {("/", "POST"): "transaction", ("/_history", "GET"): "history-system",
                       ("/", "GET"): "search-system"}

# name -> {"definition": canonical, "types": [...], "level": ...}; filled by register_operation
OPERATIONS: dict[str, dict] = {}
# Types served by their own blueprint (AuditEvent): type -> a function that describes it,
# listed when the app routes that type.
EXTRA_RESOURCES: dict = {}


def register_resource(res_type: str, describe) -> None:
    EXTRA_RESOURCES[res_type] = describe


def register_operation(name: str, definition: str, types: list[str], documentation: str = "") -> None:
    OPERATIONS[name] = {"definition": definition, "types": list(types), "documentation": documentation}


@blueprint.route("/metadata", methods=["GET", "HEAD"])
def metadata() -> Response:
    return json_response(capability_statement())


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^:<>]+)>")


def registered_routes() -> set[tuple[str, str]]:
    """(rule relative to the FHIR base, method) for every rule the app serves under it.

    Converters are dropped (`<restype:res_type>` -> `<res_type>`) so that the keys of
    TYPE_INTERACTIONS do not depend on how a blueprint constrains its variables.
    """
    prefix = current_app.config["FHIRIMG_PREFIX"]
    out = set()
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        relative = _CONVERTER.sub(r"<\1>", rule.rule[len(prefix):]) or "/"
        for method in rule.methods or ():
            out.add((relative, method))
    return out


def capability_statement() -> dict:
    routes = registered_routes()
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": current_app.config["FHIRIMG_STARTED"],
        "kind": "instance",
        "software": {"name": "fhirimg", "version": __version__},
        "implementation": {"description": "fhirimg FHIR R5 imaging exchange server", "url": base_url()},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": [resource_capability(t, routes) for t in SUPPORTED_TYPES]
            + [describe() for res_type, describe in EXTRA_RESOURCES.items() if (f"/{res_type}", "GET") in routes],
            "interaction": [{"code": code} for key, code in SYSTEM_INTERACTIONS.items() if key in routes]
            + ([{"code": "batch"}] if ("/", "POST") in routes else []),
        }],
    }
    security = security_entry()
    if security:
        statement["rest"][0]["security"] = security
    system_ops = [op for op in operation_entries(None)]
    if system_ops:
        statement["rest"][0]["operation"] = system_ops
    return statement


SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def security_entry() -> dict | None:
    """rest.security: SMART-on-FHIR, with the oauth-uris extension (the discovery document
    at .well-known/smart-configuration is the authoritative one)."""
    config = current_app.config["FHIRIMG"]
    if config["auth"]["mode"] != "smart":
        return None
    from .access import public_base
    root = public_base()[: -len("/fhir")] if public_base().endswith("/fhir") else public_base()
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": f"{root}/auth/token"}]}],
        "cors": bool(config["cors"]["allowed_origins"]),
        "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}],
        "description": "SMART Backend Services (client_credentials + private_key_jwt) and SMART v2/v1 scopes; "
                       f"see {base_url()}/.well-known/smart-configuration",
    }


def resource_capability(res_type: str, routes: set) -> dict:
    entry = {
        "type": res_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
        "interaction": [{"code": code} for key, code in TYPE_INTERACTIONS.items() if key in routes],
        "versioning": "versioned-update",
        "readHistory": ("/<res_type>/<res_id>/_history/<version>", "GET") in routes,
        "updateCreate": ("/<res_type>/<res_id>", "PUT") in routes,
        "conditionalCreate": ("/<res_type>", "POST") in routes,
        "conditionalRead": "full-support" if ("/<res_type>/<res_id>", "GET") in routes else "not-supported",
        "conditionalUpdate": ("/<res_type>", "PUT") in routes,
        "conditionalPatch": ("/<res_type>", "PATCH") in routes,
        "conditionalDelete": "single" if ("/<res_type>", "DELETE") in routes else "not-supported",
        "searchParam": [search_param_entry(p) for p in search_registry.parameters_for(res_type)],
    }
    if search_registry.includes_for(res_type):
        entry["searchInclude"] = search_registry.includes_for(res_type)
    if search_registry.revincludes_for(res_type):
        entry["searchRevInclude"] = search_registry.revincludes_for(res_type)
    ops = operation_entries(res_type)
    if ops:
        entry["operation"] = ops
    if res_type == "Subscription":  # R5: the topics a Subscription may name
        from ..subscriptions.topics import TOPICS
        entry["extension"] = [{"url": TOPIC_CANONICAL, "valueCanonical": topic.url} for topic in TOPICS]
    return entry


TOPIC_CANONICAL = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"


def search_param_entry(param) -> dict:
    entry = {"name": param.name, "type": param.type, "documentation": param.documentation}
    if param.definition:
        entry["definition"] = param.definition
    return entry


def operation_entries(res_type: str | None) -> list[dict]:
    return [{"name": name, "definition": op["definition"], **({"documentation": op["documentation"]}
                                                              if op["documentation"] else {})}
            for name, op in OPERATIONS.items()
            if (res_type is None and not op["types"]) or res_type in op["types"]]


__all__ = ["blueprint", "register_operation", "request"]
