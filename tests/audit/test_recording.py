"""What the audit trail records, request by request (issue 14): one event per act and per
patient, writes in their own transaction, refusals as failures, never a token."""
from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import text

from fhirimg.store.engine import WRITE_OPTION

from ..auth_support import authorized, get_token
from ..factories import make_imaging_study, make_patient
from .trail import all_events, code_of, details_of, events_of, outcome_of, patient_of, query_of, whats


def post(client, path, body, request_id=None):
    response = client.post(path, json=body, headers={"X-Request-Id": request_id} if request_id else {})
    assert response.status_code in (200, 201), response.json
    return response.json


def patient_with_study(client, mrn: str, modality: str = "CT") -> tuple[str, str]:
    patient = post(client, "/fhir/Patient", make_patient(mrn))["id"]
    study = post(client, "/fhir/ImagingStudy", make_imaging_study(f"Patient/{patient}", modality=modality))["id"]
    return patient, study


def test_a_search_returning_three_patients_studies_is_three_query_events_one_per_patient(client, engine):
    patients = sorted(patient_with_study(client, f"MRN-{n}", "MR")[0] for n in range(3))
    patient_with_study(client, "MRN-other", "CT")
    response = client.get("/fhir/ImagingStudy?modality=MR&_count=10", headers={"X-Request-Id": "req-three"})
    assert response.status_code == 200 and response.json["total"] == 3
    events = events_of(engine, "req-three")
    assert len(events) == 3
    assert sorted(patient_of(e) for e in events) == [f"Patient/{p}" for p in patients]
    for event in events:
        assert code_of(event) == "search-type" and event["action"] == "E" and outcome_of(event) == "0"
        assert query_of(event) == "modality=MR&_count=10"  # the raw query, as BALP asks


def test_a_search_with_no_results_is_one_event_without_a_patient(client, engine):
    client.get("/fhir/Patient?family=Nobody", headers={"X-Request-Id": "req-none"})
    (event,) = events_of(engine, "req-none")
    assert "patient" not in event and query_of(event) == "family=Nobody"


def test_a_read_is_one_event_naming_the_version_read_and_its_patient(client, engine):
    patient, study = patient_with_study(client, "MRN-R")
    client.get(f"/fhir/ImagingStudy/{study}", headers={"X-Request-Id": "req-read"})
    (event,) = events_of(engine, "req-read")
    assert code_of(event) == "read" and event["action"] == "R"
    assert patient_of(event) == f"Patient/{patient}" and f"ImagingStudy/{study}/_history/1" in whats(event)


def test_every_write_is_one_event_naming_the_version_it_wrote(client, engine):
    patient = post(client, "/fhir/Patient", make_patient("MRN-W"), "req-create")["id"]
    body = client.get(f"/fhir/Patient/{patient}").json
    client.put(f"/fhir/Patient/{patient}", json={**body, "birthDate": "1971-02-03"}, headers={"X-Request-Id": "req-put"})
    client.patch(f"/fhir/Patient/{patient}", json=[{"op": "replace", "path": "/birthDate", "value": "1972-03-04"}],
                 headers={"Content-Type": "application/json-patch+json", "X-Request-Id": "req-patch"})
    client.delete(f"/fhir/Patient/{patient}", headers={"X-Request-Id": "req-delete"})
    for request_id, code, action, version in [("req-create", "create", "C", 1), ("req-put", "update", "U", 2),
                                              ("req-patch", "patch", "U", 3), ("req-delete", "delete", "D", 4)]:
        (event,) = events_of(engine, request_id)
        assert (code_of(event), event["action"], outcome_of(event)) == (code, action, "0")
        assert f"Patient/{patient}/_history/{version}" in whats(event)
        assert patient_of(event) == f"Patient/{patient}"  # a delete still names whose record it was
        assert event["agent"][0]["who"]["identifier"]["value"] == "test-client"


def test_a_study_moved_to_another_patient_is_found_under_both(client, engine):
    first, study = patient_with_study(client, "MRN-1")
    second = post(client, "/fhir/Patient", make_patient("MRN-2"))["id"]
    body = client.get(f"/fhir/ImagingStudy/{study}").json
    body["subject"] = {"reference": f"Patient/{second}"}
    client.put(f"/fhir/ImagingStudy/{study}", json=body, headers={"X-Request-Id": "req-move"})
    (event,) = events_of(engine, "req-move")
    assert patient_of(event) == f"Patient/{second}" and f"Patient/{first}" in whats(event)
    found = client.get(f"/fhir/AuditEvent?patient={first}&code=update").json
    assert [e["resource"]["id"] for e in found["entry"]] == [str(event["_seq"])]


def test_an_unchanged_update_is_recorded_though_no_version_is_written(client, engine):
    patient = post(client, "/fhir/Patient", make_patient("MRN-U"))["id"]
    body = client.get(f"/fhir/Patient/{patient}").json
    assert client.put(f"/fhir/Patient/{patient}", json=body, headers={"X-Request-Id": "req-same"}).status_code == 200
    (event,) = events_of(engine, "req-same")
    assert code_of(event) == "update" and whats(event) == [f"Patient/{patient}"]


def test_a_refused_write_is_a_failure_event_and_writes_nothing(client, engine):
    bad = {**make_patient("MRN-X"), "birthDate": "not-a-date"}
    response = client.post("/fhir/Patient", json=bad, headers={"X-Request-Id": "req-bad"})
    assert response.status_code == 400
    (event,) = events_of(engine, "req-bad")
    assert code_of(event) == "create" and outcome_of(event) == "4"
    assert "birthDate" in event["outcome"]["detail"][0]["text"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource_version")).scalar() == 0


def test_a_403_is_a_failure_event_with_the_reason(app, engine):
    reader = authorized(app, "system/Patient.rs", client_id="patient-reader")
    response = reader.get("/fhir/ImagingStudy?modality=CT", headers={"X-Request-Id": "req-403"})
    assert response.status_code == 403
    (event,) = events_of(engine, "req-403")
    assert outcome_of(event) == "4" and code_of(event) == "search-type"
    assert "403" in event["outcome"]["detail"][0]["text"] and "ImagingStudy" in event["outcome"]["detail"][0]["text"]
    assert event["agent"][0]["who"]["identifier"]["value"] == "patient-reader"


def test_a_401_is_a_failure_event_of_an_unauthenticated_client(app, engine):
    response = app.test_client().get("/fhir/Patient/abc", headers={"X-Request-Id": "req-401"})
    assert response.status_code == 401
    (event,) = events_of(engine, "req-401")
    assert outcome_of(event) == "4" and code_of(event) == "read" and whats(event) == ["Patient/abc"]
    assert event["agent"][0]["who"]["identifier"]["value"] == "unauthenticated"


def test_token_issuance_and_a_refused_token_request_are_login_events(app, engine):
    get_token(app.test_client(), engine, "system/Patient.rs", client_id="login-client")
    refused = app.test_client().post("/auth/token", data={"grant_type": "client_credentials",
                                                          "client_id": "intruder"},
                                     headers={"X-Request-Id": "req-bad-token"})
    assert refused.status_code == 400
    logins = [e for e in all_events(engine) if code_of(e) == "110122"]
    assert logins[0]["agent"][0]["who"]["identifier"]["value"] == "login-client" and outcome_of(logins[0]) == "0"
    assert details_of(logins[0])["scope"] == "system/Patient.rs"
    (failed,) = events_of(engine, "req-bad-token")
    assert outcome_of(failed) == "4" and failed["agent"][0]["who"]["identifier"]["value"] == "unverified:intruder"


def test_no_bearer_token_is_ever_recorded_logged_or_stored(app, engine, caplog):
    caplog.set_level(logging.DEBUG)
    client = authorized(app)
    token = client.environ_base["HTTP_AUTHORIZATION"].split(" ", 1)[1]
    patient, study = patient_with_study(client, "MRN-T")
    client.get(f"/fhir/ImagingStudy?patient={patient}")
    client.get("/fhir/Patient/unknown-id")
    authorized(app, "system/Patient.rs", client_id="narrow").get("/fhir/ImagingStudy")  # a 403
    app.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {token}x"})  # a 401
    signature = token.rsplit(".", 1)[1]
    with engine.connect() as conn:
        tables = [t for t in conn.dialect.get_table_names(conn) if t != "auth_key"]  # our own signing keys
        dump = "".join(str(conn.execute(text(f'SELECT * FROM "{t}"')).all()) for t in tables)
    assert "audit_event" in tables and len(all_events(engine)) >= 6
    for where in (dump, caplog.text):
        assert token not in where and signature not in where


def test_a_transaction_records_one_event_per_entry(client, engine):
    patient = post(client, "/fhir/Patient", make_patient("MRN-B"))["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:8f1c8a9e-0000-4000-8000-000000000001",
         "resource": make_patient("MRN-C"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": make_imaging_study("urn:uuid:8f1c8a9e-0000-4000-8000-000000000001"),
         "request": {"method": "POST", "url": "ImagingStudy"}},
        {"request": {"method": "GET", "url": f"Patient/{patient}"}},
        {"request": {"method": "DELETE", "url": "Patient/never-existed"}}]}
    response = client.post("/fhir", json=bundle, headers={"X-Request-Id": "req-tx"})
    assert response.status_code == 200, response.json
    events = events_of(engine, "req-tx")
    assert sorted(code_of(e) for e in events) == ["create", "create", "delete", "read"]
    created = {w.split("/")[0] for e in events if code_of(e) == "create" for w in whats(e) if "_history" in w}
    assert created == {"Patient", "ImagingStudy"}


def test_a_batch_entry_that_fails_is_its_own_failure_event(client, engine):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": make_patient("MRN-D"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**make_patient("MRN-E"), "birthDate": "never"}, "request": {"method": "POST", "url": "Patient"}}]}
    assert client.post("/fhir", json=bundle, headers={"X-Request-Id": "req-batch"}).status_code == 200
    events = events_of(engine, "req-batch")
    assert sorted((code_of(e), outcome_of(e)) for e in events) == [("create", "0"), ("create", "4")]


def test_a_failed_transaction_is_one_failure_event_and_nothing_else(client, engine):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_patient("MRN-F"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**make_patient("MRN-G"), "birthDate": "x"}, "request": {"method": "POST", "url": "Patient"}}]}
    assert client.post("/fhir", json=bundle, headers={"X-Request-Id": "req-txf"}).status_code == 400
    (event,) = events_of(engine, "req-txf")
    assert code_of(event) == "transaction" and outcome_of(event) == "4"


def test_history_feeds_are_query_events_per_patient(client, engine):
    first, _ = patient_with_study(client, "MRN-H1")
    second, _ = patient_with_study(client, "MRN-H2")
    client.get("/fhir/_history?_count=100", headers={"X-Request-Id": "req-feed"})
    events = events_of(engine, "req-feed")
    assert sorted(patient_of(e) for e in events) == sorted([f"Patient/{first}", f"Patient/{second}"])
    assert {code_of(e) for e in events} == {"history-system"}


def test_writes_by_the_server_itself_name_it_as_the_agent(repo, engine):
    stored = repo.create("Patient", make_patient("MRN-S"))
    (event,) = [e for e in all_events(engine) if f"Patient/{stored.res_id}/_history/1" in whats(e)]
    assert event["agent"][0]["who"]["identifier"]["value"] == "fhirimg"
    assert event["source"]["observer"]["identifier"]["value"].startswith("urn:uuid:")


def hold_audit_head(database, release: threading.Event, held: threading.Event) -> None:
    """Another process's transaction holds the chain's head (SQLite: the database write lock)."""
    from fhirimg.store import make_engine
    other = make_engine(database[0], schema=database[1])
    with other.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        conn.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
        held.set()
        release.wait(30)
    other.dispose()


def test_a_read_whose_event_cannot_be_made_durable_is_503_without_data(client, app, database):
    patient = post(client, "/fhir/Patient", make_patient("MRN-503"))["id"]
    app.extensions["fhirimg.audit"].timeout = 0.5
    app.extensions["fhirimg.audit"].conn = None  # reconnect with the shorter lock wait
    release, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_audit_head, args=(database, release, held))
    holder.start()
    try:
        assert held.wait(10)
        response = client.get(f"/fhir/Patient/{patient}")
    finally:
        release.set()
        holder.join()
    assert response.status_code == 503 and b"MRN-503" not in response.data
    assert response.json["resourceType"] == "OperationOutcome" and "audit" in response.json["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/{patient}").status_code == 200  # and it recovers


def test_concurrent_reads_share_commits(client, app, engine):
    patient = post(client, "/fhir/Patient", make_patient("MRN-G"))["id"]
    committer = app.extensions["fhirimg.audit"]
    before = committer.commits
    statuses = []

    def read(n):
        for _ in range(10):
            statuses.append(client.get(f"/fhir/Patient/{patient}").status_code)
    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 80
    reads = [e for e in all_events(engine) if code_of(e) == "read"]
    assert len(reads) == 80
    assert committer.commits - before <= 80  # never more commits than requests; fewer under load


@pytest.mark.parametrize("enabled", [False])
def test_with_auditing_off_nothing_is_recorded(database, enabled):
    from fhirimg.app import create_app
    from fhirimg.config import load_config
    from fhirimg.store import make_engine
    url, schema = database
    eng = make_engine(url, schema=schema)
    config = load_config(env={}, read_files=False, overrides={"database_url": url, "audit": {"enabled": enabled}})
    client = authorized(create_app(config, engine=eng))
    post(client, "/fhir/Patient", make_patient("MRN-OFF"))
    client.get("/fhir/Patient")
    assert all_events(eng) == []
