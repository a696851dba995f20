"""Reading the audit trail over FHIR: read and search only, the R5 search parameters,
paging, a patient-limited client sees its patients' trail, $verify, and reading it is
itself audited."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from ..auth_support import authorized
from ..factories import make_imaging_study, make_patient
from .test_chain import tamper
from .trail import all_events, code_of, events_of


def create(client, path, body) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 201, response.json
    return response.json["id"]


def ids(bundle) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def search(client, query: str) -> dict:
    response = client.get(f"/fhir/AuditEvent?{query}")
    assert response.status_code == 200, response.json
    return response.json


@pytest.fixture
def population(client):
    """Two patients, a study each, a read of the first study."""
    first = create(client, "/fhir/Patient", make_patient("MRN-A"))
    second = create(client, "/fhir/Patient", make_patient("MRN-B"))
    study = create(client, "/fhir/ImagingStudy", make_imaging_study(f"Patient/{first}"))
    create(client, "/fhir/ImagingStudy", make_imaging_study(f"Patient/{second}"))
    assert client.get(f"/fhir/ImagingStudy/{study}", headers={"X-Request-Id": "req-read"}).status_code == 200
    return first, second, study


def test_search_by_patient_finds_every_access_to_that_patients_data(client, engine, population):
    first, _, study = population
    expected = [str(e["_seq"]) for e in all_events(engine) if e.get("patient", {}).get("reference") == f"Patient/{first}"]
    assert len(expected) == 3  # the Patient's create, the study's create, the read
    assert ids(search(client, f"patient={first}&_count=100")) == expected
    again = ids(search(client, f"patient=Patient/{first}&_count=100"))
    assert again[:3] == expected and len(again) == 4  # the first search of the trail is an access too


@pytest.mark.parametrize("query, codes", [
    ("action=R", ["read"]), ("code=read", ["read"]),
    ("code=http://hl7.org/fhir/restful-interaction|read", ["read"]),
    ("entity-role=http://terminology.hl7.org/CodeSystem/object-role|1&action=C", ["create"] * 4),
    ("category=rest&action=C", ["create"] * 4), ("outcome=0&action=R", ["read"]),
    ("outcome=4", []), ("action=C,R", ["create"] * 4 + ["read"])])
def test_token_parameters(client, population, query, codes):
    found = search(client, query + "&_count=100")
    assert [e["resource"]["code"]["coding"][0]["code"] for e in found.get("entry", [])] == codes


def test_entity_finds_who_saw_a_study_by_resource_or_version(client, engine, population):
    _, _, study = population
    read = events_of(engine, "req-read")[0]
    assert str(read["_seq"]) in ids(search(client, f"entity=ImagingStudy/{study}"))
    assert ids(search(client, f"entity=ImagingStudy/{study}/_history/1&action=R")) == [str(read["_seq"])]


def test_agent_and_policy_find_a_clients_and_a_tokens_events(client, engine, population):
    read = events_of(engine, "req-read")[0]
    policy = read["agent"][0]["policy"][0]
    assert str(read["_seq"]) in ids(search(client, "agent=test-client&_count=100"))
    assert search(client, "agent=someone-else").get("entry") is None
    assert str(read["_seq"]) in ids(search(client, f"policy={policy}&_count=100"))
    source = read["source"]["observer"]["identifier"]["value"]
    assert str(read["_seq"]) in ids(search(client, f"source={source}&_count=100"))


def test_date_and_sort_and_paging_walk_every_event_once(client, engine, population):
    # Reading the trail adds query events (action E): the walk looks at the others.
    everything = [str(e["_seq"]) for e in all_events(engine) if e["action"] != "E"]
    pages, url = [], "/fhir/AuditEvent?date=ge2000-01-01&action=C,R,U,D&_count=2"
    for _ in range(20):
        bundle = client.get(url.replace("http://localhost", "")).json
        pages += ids(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if url is None:
            break
    assert pages == everything and len(pages) == 5
    newest = search(client, "_sort=-date&_count=3")
    assert ids(newest) == sorted(ids(newest), key=int, reverse=True)
    assert search(client, "date=lt2000-01-01").get("entry") is None


def test_bad_parameters_are_400_naming_them(client):
    for query, name in [("colour=red", "colour"), ("date=xx2020", "date"), ("code:exact=read", "code:exact"),
                        ("_sort=patient", "_sort"), ("_count=many", "_count")]:
        response = client.get(f"/fhir/AuditEvent?{query}")
        assert response.status_code == 400, query
        assert response.json["issue"][0]["expression"] == [name]


def test_read_an_audit_event(client, engine, population):
    read = events_of(engine, "req-read")[0]
    response = client.get(f"/fhir/AuditEvent/{read['_seq']}")
    assert response.status_code == 200
    assert response.json["id"] == str(read["_seq"]) and response.json["code"] == read["code"]
    assert client.get("/fhir/AuditEvent/999999").status_code == 404
    assert client.get("/fhir/AuditEvent/not-a-number").status_code == 404


@pytest.mark.parametrize("method, path", [("POST", "/fhir/AuditEvent"), ("PUT", "/fhir/AuditEvent/1"),
                                          ("PATCH", "/fhir/AuditEvent/1"), ("DELETE", "/fhir/AuditEvent/1"),
                                          ("DELETE", "/fhir/AuditEvent?patient=x")])
def test_audit_events_cannot_be_written_by_clients(client, engine, population, method, path):
    before = len(all_events(engine))
    response = client.open(path, method=method, json={"resourceType": "AuditEvent"})
    assert response.status_code == 405 and response.json["resourceType"] == "OperationOutcome"
    events = all_events(engine)
    assert len(events) == before + 1 and events[-1]["outcome"]["code"]["code"] == "4"  # the attempt is recorded


def test_reading_the_trail_needs_an_audit_scope_and_is_itself_audited(app, client, engine, population):
    assert authorized(app, "system/Patient.rs system/ImagingStudy.rs", client_id="no-audit") \
        .get("/fhir/AuditEvent").status_code == 403
    client.get("/fhir/AuditEvent?action=R", headers={"X-Request-Id": "req-audit-read"})
    (event,) = events_of(engine, "req-audit-read")
    assert code_of(event) == "search-type" and event["patient"]["reference"] == f"Patient/{population[0]}"


def test_a_client_limited_to_a_patient_sees_only_that_patients_trail(app, client, engine, population):
    first, second, _ = population
    limited = authorized(app, "system/AuditEvent.rs", client_id="first-only", patients=[first])
    found = limited.get("/fhir/AuditEvent?_count=100").json
    assert found["entry"] and {e["resource"]["patient"]["reference"] for e in found["entry"]} == {f"Patient/{first}"}
    other = next(e for e in all_events(engine) if e.get("patient", {}).get("reference") == f"Patient/{second}")
    assert limited.get(f"/fhir/AuditEvent/{other['_seq']}").status_code == 403
    assert limited.get("/fhir/AuditEvent/$verify").status_code == 403


def test_verify_reports_ok_then_the_tampered_row(client, engine, population):
    ok = {p["name"]: next(v for k, v in p.items() if k.startswith("value"))
          for p in client.get("/fhir/AuditEvent/$verify").json["parameter"]}
    assert ok["result"] is True and ok["count"] == len(all_events(engine)) - 1  # $verify is recorded after
    target = all_events(engine)[2]["_seq"]
    tamper(engine, f"UPDATE audit_event SET event = replace(event, 'create', 'delete') WHERE seq = {target}")
    broken = {p["name"]: next(v for k, v in p.items() if k.startswith("value"))
              for p in client.get("/fhir/AuditEvent/$verify").json["parameter"]}
    assert broken["result"] is False and broken["brokenAt"] == str(target)


def test_the_capability_statement_lists_audit_event_read_and_search(client):
    resources = {r["type"]: r for r in client.get("/fhir/metadata").json["rest"][0]["resource"]}
    audit = resources["AuditEvent"]
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]
    names = {p["name"] for p in audit["searchParam"]}
    assert {"action", "agent", "agent-role", "category", "code", "date", "entity", "entity-role", "outcome",
            "patient", "policy", "purpose", "source", "_lastUpdated"} <= names
    assert any(op["name"] == "verify" for op in audit["operation"])


def test_the_audit_index_is_append_only_too(engine, population):
    from sqlalchemy.exc import DBAPIError
    from fhirimg.audit.fold import catch_up
    from fhirimg.store.engine import WRITE_OPTION
    catch_up(engine)  # SQLite writes the search values behind the chain
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_index")).scalar() > 0
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(text("DELETE FROM audit_index"))
