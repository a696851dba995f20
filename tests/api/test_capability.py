"""GET [base]/metadata: a CapabilityStatement generated from what the app registers."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from flask import Flask

from fhirimg import FHIR_VERSION
from fhirimg.api import capability
from fhirimg.config import load_config
from fhirimg.resources import SUPPORTED_TYPES
from fhirimg.search import registry

from ..factories import make_patient
from .outcomes import assert_outcome, create

CRUD = {"create", "read", "vread", "update", "patch", "delete", "search-type"}
# interaction code -> (method, path below /fhir) used to prove a listed interaction is served
PROBES = {"read": ("GET", "/Patient/{id}"), "vread": ("GET", "/Patient/{id}/_history/1"),
          "update": ("PUT", "/Patient/{id}"), "patch": ("PATCH", "/Patient/{id}"),
          "delete": ("DELETE", "/Patient/{id}"), "create": ("POST", "/Patient"),
          "search-type": ("GET", "/Patient"), "history-instance": ("GET", "/Patient/{id}/_history"),
          "history-type": ("GET", "/Patient/_history"), "history-system": ("GET", "/_history"),
          "transaction": ("POST", "/"), "batch": ("POST", "/"), "search-system": ("GET", "/")}


def statement(client) -> dict:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    return response.get_json()


def resource_entry(body: dict, res_type: str) -> dict:
    return next(r for r in body["rest"][0]["resource"] if r["type"] == res_type)


def test_metadata_is_an_r5_capability_statement(client):
    body = statement(client)
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "5.0.0" == FHIR_VERSION
    assert body["kind"] == "instance" and body["status"] == "active"
    assert body["date"].startswith(datetime.now(timezone.utc).date().isoformat()[:4])
    assert set(body["format"]) >= {"application/fhir+json", "application/json"}
    assert "application/json-patch+json" in body["patchFormat"]
    assert body["rest"][0]["mode"] == "server"


def test_metadata_is_a_valid_r5_resource(client):
    from fhir.resources.capabilitystatement import CapabilityStatement
    CapabilityStatement.model_validate(statement(client))


def test_metadata_lists_each_supported_type_once(client):
    types = [r["type"] for r in statement(client)["rest"][0]["resource"]]
    assert sorted(types) == sorted(SUPPORTED_TYPES + ("AuditEvent", "SubscriptionTopic"))  # the audit trail: read and search
    assert set(types) == {"Patient", "ImagingStudy", "Endpoint", "Task", "Subscription", "AuditEvent", "SubscriptionTopic"}


@pytest.mark.parametrize("res_type", ["Patient", "ImagingStudy", "Endpoint", "Task"])
def test_each_type_lists_the_crud_interactions_and_conditionals(client, res_type):
    entry = resource_entry(statement(client), res_type)
    assert CRUD <= {i["code"] for i in entry["interaction"]}
    assert entry["versioning"] == "versioned-update" and entry["readHistory"] is True
    assert entry["updateCreate"] is True and entry["conditionalCreate"] is True
    assert entry["conditionalUpdate"] is True and entry["conditionalDelete"] == "single"


def test_every_listed_interaction_is_actually_served(client):
    patient_id = create(client, make_patient()).get_json()["id"]
    body = statement(client)
    listed = {i["code"] for i in resource_entry(body, "Patient")["interaction"]}
    listed |= {i["code"] for i in body["rest"][0].get("interaction", [])}
    for code in listed:
        method, path = PROBES[code]
        response = client.open("/fhir" + path.format(id=patient_id), method=method)
        text = response.get_data(as_text=True)
        assert response.status_code != 405 and "no such endpoint" not in text, (code, response.status_code, text)


def test_interactions_are_exactly_those_of_the_registered_rules(app, client):
    prefix = "/fhir"
    rules = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefix):
            path = rule.rule[len(prefix):].replace("<restype:res_type>", "<res_type>") or "/"
            rules |= {(path, m) for m in rule.methods}
    expected = {code for key, code in capability.TYPE_INTERACTIONS.items() if key in rules}
    listed = {i["code"] for i in resource_entry(statement(client), "ImagingStudy")["interaction"]}
    assert listed == expected


def test_search_parameters_come_from_the_registry(client):
    body = statement(client)
    for res_type in SUPPORTED_TYPES:
        names = [p["name"] for p in resource_entry(body, res_type).get("searchParam", [])]
        assert names == [p.name for p in registry.parameters_for(res_type)]
        assert {"_id", "identifier"} <= set(names)


def test_a_registered_operation_is_advertised(client, monkeypatch):
    monkeypatch.setitem(capability.OPERATIONS, "test-op", {
        "definition": "http://example.org/OperationDefinition/test-op", "types": ["ImagingStudy"],
        "documentation": ""})
    body = statement(client)
    ops = resource_entry(body, "ImagingStudy").get("operation", [])
    assert {"name": "test-op", "definition": "http://example.org/OperationDefinition/test-op"} in ops
    assert "test-op" not in [o["name"] for o in resource_entry(body, "Patient").get("operation", [])]


def test_head_on_metadata_is_200_without_body(client):
    response = client.head("/fhir/metadata")
    assert response.status_code == 200 and response.data == b""


def test_metadata_answers_406_for_xml(client):
    assert_outcome(client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}), 406)


# --- generated, not kept by hand: a bare app with only the capability blueprint ------------

@pytest.fixture
def bare_app():
    app = Flask("bare")
    app.config["FHIRIMG"] = load_config(env={}, read_files=False)
    app.config["FHIRIMG_PREFIX"] = "/fhir"
    app.register_blueprint(capability.blueprint, url_prefix="/fhir")
    return app


def listed_codes(app) -> tuple[set[str], set[str]]:
    body = app.test_client().get("/fhir/metadata").get_json()
    rest = body["rest"][0]
    types = {r["type"]: {i["code"] for i in r["interaction"]} for r in rest["resource"]}
    assert len({frozenset(v) for v in types.values()}) == 1  # every type gets the same routes
    return types["Patient"], {i["code"] for i in rest.get("interaction", [])}


def test_without_interaction_routes_nothing_is_listed(bare_app):
    assert listed_codes(bare_app) == (set(), set())


def test_adding_an_interaction_route_adds_it_to_the_statement(bare_app):
    def view(**_):
        return ""

    bare_app.add_url_rule("/fhir/<res_type>/<res_id>", "read", view, methods=["GET"])
    bare_app.add_url_rule("/fhir/<res_type>/<res_id>/_history", "history", view, methods=["GET"])
    bare_app.add_url_rule("/fhir/", "bundle", view, methods=["POST"])
    type_codes, system_codes = listed_codes(bare_app)
    assert type_codes == {"read", "history-instance"}
    assert system_codes == {"transaction", "batch"}
    entry = bare_app.test_client().get("/fhir/metadata").get_json()["rest"][0]["resource"][0]
    assert entry["conditionalCreate"] is False and entry["conditionalDelete"] == "not-supported"
    assert entry["updateCreate"] is False and entry["conditionalRead"] == "full-support"
