"""Transaction Bundles (http.html#transaction): linking, order, conditional writes and
references, Prefer. Every test runs on SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import json

from ..api.outcomes import assert_outcome, create, nothing_written
from .bundles import (MRN, bundle, ehr_transaction, entry, location_id, make_endpoint,
                      make_imaging_study, make_patient, ok, post_bundle, statuses, urn)


def read(client, reference: str) -> dict:
    response = client.get(f"/fhir/{reference}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_ehr_transaction_creates_patient_endpoint_and_study_linked(client):
    result = ok(post_bundle(client, ehr_transaction(series=2, instances=3)))
    assert result["resourceType"] == "Bundle" and result["type"] == "transaction-response"
    assert statuses(result) == ["201 Created"] * 3
    patient_id, endpoint_id, study_id = (location_id(e) for e in result["entry"])
    study = read(client, f"ImagingStudy/{study_id}")
    assert study["subject"]["reference"] == f"Patient/{patient_id}"
    assert study["endpoint"] == [{"reference": f"Endpoint/{endpoint_id}"}]
    assert [s["endpoint"] for s in study["series"]] == [[{"reference": f"Endpoint/{endpoint_id}"}]] * 2
    assert read(client, f"Patient/{patient_id}")["identifier"][0]["value"] == "MRN-1"


def test_response_entries_carry_location_etag_and_last_modified(client):
    result = ok(post_bundle(client, ehr_transaction()))
    for item in result["entry"]:
        response = item["response"]
        res_type, res_id, _, version = response["location"].split("/")
        assert response["etag"] == f'W/"{version}"'
        stored = read(client, f"{res_type}/{res_id}")
        assert stored["meta"]["lastUpdated"] == response["lastModified"]
        assert item["resource"] == stored
        assert item["fullUrl"].endswith(f"/fhir/{res_type}/{res_id}")


def test_nested_references_are_rewritten_everywhere(client):
    p_url, e_url = urn(), urn()
    study = make_imaging_study(patient_ref=p_url, series=2)
    study["series"][1]["performer"] = [{"actor": {"reference": p_url}}]
    study["series"][0]["endpoint"] = [{"reference": e_url}]
    study["extension"] = [{"url": "http://example.org/fhir/StructureDefinition/source-endpoint",
                           "valueReference": {"reference": e_url}}]
    result = ok(post_bundle(client, bundle(entry(study, "POST", "ImagingStudy", urn()),
                                           entry(make_patient(), "POST", "Patient", p_url),
                                           entry(make_endpoint(), "POST", "Endpoint", e_url))))
    study_id, patient_id, endpoint_id = (location_id(e) for e in result["entry"])
    stored = read(client, f"ImagingStudy/{study_id}")
    assert stored["series"][1]["performer"][0]["actor"]["reference"] == f"Patient/{patient_id}"
    assert stored["series"][0]["endpoint"][0]["reference"] == f"Endpoint/{endpoint_id}"
    assert stored["extension"][0]["valueReference"]["reference"] == f"Endpoint/{endpoint_id}"
    assert "urn:uuid:" not in json.dumps(stored)


def test_urn_oid_full_urls_are_resolved_and_identifiers_left_alone(client):
    study_uid = "1.2.826.0.1.3680043.10.543.77.1"
    patient_oid = "urn:oid:1.2.826.0.1.3680043.10.543.77.2"
    study = make_imaging_study(patient_ref=patient_oid, study_uid=study_uid)
    result = ok(post_bundle(client, bundle(entry(make_patient(), "POST", "Patient", patient_oid),
                                           entry(study, "POST", "ImagingStudy", f"urn:oid:{study_uid}"))))
    stored = read(client, f"ImagingStudy/{location_id(result['entry'][1])}")
    assert stored["subject"]["reference"] == f"Patient/{location_id(result['entry'][0])}"
    # the study's own identifier equals its fullUrl and must not be rewritten
    assert stored["identifier"][0]["value"] == f"urn:oid:{study_uid}"


def test_absolute_full_url_of_a_put_is_rewritten_to_the_local_reference(client):
    full_url = "http://ehr.example.org/fhir/Patient/p-77"
    result = ok(post_bundle(client, bundle(
        entry(make_imaging_study(patient_ref=full_url), "POST", "ImagingStudy"),
        entry(make_patient(id="p-77"), "PUT", "Patient/p-77", full_url))))
    stored = read(client, f"ImagingStudy/{location_id(result['entry'][0])}")
    assert stored["subject"]["reference"] == "Patient/p-77"


def test_client_id_in_a_post_is_ignored(client):
    result = ok(post_bundle(client, bundle(entry(make_patient(id="mine"), "POST", "Patient"))))
    assert location_id(result["entry"][0]) != "mine"


def test_entries_run_in_spec_order_and_answer_in_request_order(client):
    """http.html#trules: DELETE, POST, PUT/PATCH, then GET - whatever the order in the Bundle."""
    kept = create(client, make_patient(mrn="keep")).get_json()["id"]
    doomed = create(client, make_patient(mrn="doomed")).get_json()["id"]
    result = ok(post_bundle(client, bundle(
        entry(None, "GET", f"Patient?identifier={MRN}|new"),
        entry(None, "GET", f"Patient/{kept}"),
        entry(make_patient(id=kept, mrn="keep", family="Updated"), "PUT", f"Patient/{kept}"),
        entry(make_patient(mrn="new"), "POST", "Patient"),
        entry(None, "DELETE", f"Patient/{doomed}"),
    )))
    assert statuses(result) == ["200 OK", "200 OK", "200 OK", "201 Created", "204 No Content"]
    search, read_back = result["entry"][0]["resource"], result["entry"][1]["resource"]
    assert search["total"] == 1 and search["entry"][0]["resource"]["id"] == location_id(result["entry"][3])
    assert read_back["name"][0]["family"] == "Updated" and read_back["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{doomed}").status_code == 410


def test_prefer_minimal_returns_only_responses(client):
    result = ok(post_bundle(client, ehr_transaction(), Prefer="return=minimal"))
    assert all(set(e) == {"response"} for e in result["entry"])
    assert all("location" in e["response"] for e in result["entry"])


def test_prefer_operation_outcome_returns_outcomes(client):
    result = ok(post_bundle(client, ehr_transaction(), Prefer="return=OperationOutcome"))
    for item in result["entry"]:
        assert "resource" not in item
        assert item["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_empty_transaction_is_accepted(client, engine):
    with nothing_written(engine):
        result = ok(post_bundle(client, bundle()))
    assert result == {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


def test_base_with_trailing_slash_is_accepted(client):
    response = client.post("/fhir/", json=bundle(), headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200


# -- conditional operations ------------------------------------------------------------------

def test_if_none_exist_matching_a_stored_resource_creates_nothing(client, engine):
    existing = create(client, make_patient(mrn="M-5")).get_json()["id"]
    with nothing_written(engine):
        result = ok(post_bundle(client, bundle(
            entry(make_patient(mrn="M-5"), "POST", "Patient", urn(), ifNoneExist=f"identifier={MRN}|M-5"))))
    assert statuses(result) == ["200 OK"] and location_id(result["entry"][0]) == existing


def test_if_none_exist_match_is_what_references_to_its_full_url_point_to(client):
    existing = create(client, make_patient(mrn="M-6")).get_json()["id"]
    p_url = urn()
    result = ok(post_bundle(client, bundle(
        entry(make_patient(mrn="M-6"), "POST", "Patient", p_url, ifNoneExist=f"identifier={MRN}|M-6"),
        entry(make_imaging_study(patient_ref=p_url), "POST", "ImagingStudy"))))
    assert read(client, f"ImagingStudy/{location_id(result['entry'][1])}")["subject"]["reference"] == \
        f"Patient/{existing}"


def test_if_none_exist_with_two_matches_is_412_and_writes_nothing(client, engine):
    create(client, make_patient(mrn="twin"))
    create(client, make_patient(mrn="twin"))
    with nothing_written(engine):
        response = post_bundle(client, bundle(
            entry(make_patient(), "POST", "Patient"),
            entry(make_patient(mrn="twin"), "POST", "Patient", ifNoneExist=f"identifier={MRN}|twin")))
    assert_outcome(response, 412, expression="Bundle.entry[1].request.ifNoneExist")


def test_conditional_update_url_updates_the_match(client):
    existing = create(client, make_patient(mrn="M-7")).get_json()["id"]
    result = ok(post_bundle(client, bundle(
        entry(make_patient(mrn="M-7", family="Renamed"), "PUT", f"Patient?identifier={MRN}|M-7"))))
    assert statuses(result) == ["200 OK"] and location_id(result["entry"][0]) == existing
    assert read(client, f"Patient/{existing}")["name"][0]["family"] == "Renamed"


def test_conditional_delete_in_a_transaction(client):
    existing = create(client, make_patient(mrn="M-8")).get_json()["id"]
    result = ok(post_bundle(client, bundle(entry(None, "DELETE", f"Patient?identifier={MRN}|M-8"),
                                           entry(None, "DELETE", f"Patient?identifier={MRN}|absent"))))
    assert statuses(result) == ["204 No Content", "204 No Content"]
    assert client.get(f"/fhir/Patient/{existing}").status_code == 410


def test_conditional_reference_resolves_against_the_store(client):
    existing = create(client, make_patient(mrn="M-9")).get_json()["id"]
    result = ok(post_bundle(client, bundle(
        entry(make_imaging_study(patient_ref=f"Patient?identifier={MRN}|M-9"), "POST", "ImagingStudy"))))
    assert read(client, f"ImagingStudy/{location_id(result['entry'][0])}")["subject"]["reference"] == \
        f"Patient/{existing}"


def test_conditional_reference_resolves_to_a_resource_created_in_the_same_transaction(client):
    result = ok(post_bundle(client, bundle(
        entry(make_imaging_study(patient_ref=f"Patient?identifier={MRN}|M-10"), "POST", "ImagingStudy"),
        entry(make_patient(mrn="M-10"), "POST", "Patient", ifNoneExist=f"identifier={MRN}|M-10"))))
    study = read(client, f"ImagingStudy/{location_id(result['entry'][0])}")
    assert study["subject"]["reference"] == f"Patient/{location_id(result['entry'][1])}"


def test_conditional_reference_with_no_match_fails_the_transaction(client, engine):
    with nothing_written(engine):
        response = post_bundle(client, bundle(
            entry(make_patient(), "POST", "Patient"),
            entry(make_imaging_study(patient_ref=f"Patient?identifier={MRN}|nobody"), "POST", "ImagingStudy")))
    assert_outcome(response, 400, expression="Bundle.entry[1].resource.subject.reference", says="matches no")


def test_conditional_reference_with_two_matches_is_412(client, engine):
    create(client, make_patient(mrn="dup"))
    create(client, make_patient(mrn="dup"))
    study = make_imaging_study(series=2)
    study["series"][1]["performer"] = [{"actor": {"reference": f"Patient?identifier={MRN}|dup"}}]
    with nothing_written(engine):
        response = post_bundle(client, bundle(entry(study, "POST", "ImagingStudy")))
    assert_outcome(response, 412, expression="Bundle.entry[0].resource.series[1].performer[0].actor.reference")


def test_criteria_naming_another_entry_use_its_resolved_identity(client, engine):
    """ifNoneExist `_id=urn:uuid:...` is evaluated after the entry it names is resolved: here
    both entries then resolve to the same stored Patient, which a transaction forbids."""
    create(client, make_patient(mrn="M-11"))
    p_url = urn()
    with nothing_written(engine):
        response = post_bundle(client, bundle(
            entry(make_patient(mrn="M-11"), "POST", "Patient", urn(), ifNoneExist=f"_id={p_url}"),
            entry(make_patient(mrn="M-11"), "PUT", f"Patient?identifier={MRN}|M-11", p_url)))
    outcome = assert_outcome(response, 400, expression="Bundle.entry[0].request", says="only once")
    assert "Bundle.entry[1].request" in outcome["issue"][0]["expression"]


def test_conditional_reference_by_code_alone_matches_an_entry_of_the_bundle(client):
    result = ok(post_bundle(client, bundle(
        entry(make_imaging_study(patient_ref="Patient?identifier=M-12"), "POST", "ImagingStudy"),
        entry(make_patient(mrn="M-12"), "POST", "Patient"))))
    study = read(client, f"ImagingStudy/{location_id(result['entry'][0])}")
    assert study["subject"]["reference"] == f"Patient/{location_id(result['entry'][1])}"


def test_get_with_if_none_match_is_304(client):
    pid = create(client, make_patient()).get_json()["id"]
    result = ok(post_bundle(client, bundle(entry(None, "GET", f"Patient/{pid}", ifNoneMatch='W/"1"'),
                                           entry(None, "GET", f"Patient/{pid}", ifNoneMatch='W/"9"'))))
    assert statuses(result) == ["304 Not Modified", "200 OK"]
    assert "resource" not in result["entry"][0] and result["entry"][1]["resource"]["id"] == pid


def test_many_conditional_creates_in_one_transaction(client):
    """Matching conditions against the Bundle's own entries stays linear (indexed by identifier)."""
    entries = [entry(make_patient(mrn=f"bulk-{n}"), "POST", "Patient", urn(), ifNoneExist=f"identifier={MRN}|bulk-{n}")
               for n in range(300)]
    result = ok(post_bundle(client, bundle(*entries)))
    assert statuses(result) == ["201 Created"] * 300


def test_capability_statement_advertises_transaction_and_batch(client):
    codes = {i["code"] for i in client.get("/fhir/metadata").get_json()["rest"][0]["interaction"]}
    assert {"transaction", "batch"} <= codes


def json_patch_entry(url: str, operations: list) -> dict:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return entry({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}, "PATCH", url)


def test_versions_are_written_in_spec_order_and_head_sees_the_writes(client, engine):
    """http.html#trules: DELETE, POST, PUT/PATCH (in Bundle order), then GET/HEAD. The change
    sequence records the order the writes ran in."""
    patched = create(client, make_patient(mrn="patched")).get_json()["id"]
    put = create(client, make_patient(mrn="put")).get_json()["id"]
    deleted = create(client, make_patient(mrn="deleted")).get_json()["id"]
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT max(seq) FROM resource_version").scalar()
    result = ok(post_bundle(client, bundle(
        entry(None, "HEAD", f"Patient/{patched}"),
        json_patch_entry(f"Patient/{patched}", [{"op": "replace", "path": "/gender", "value": "male"}]),
        entry(make_patient(id=put, mrn="put", family="Put"), "PUT", f"Patient/{put}"),
        entry(make_patient(mrn="posted"), "POST", "Patient"),
        entry(None, "DELETE", f"Patient/{deleted}"),
    )))
    assert statuses(result) == ["200 OK", "200 OK", "200 OK", "201 Created", "204 No Content"]
    head = result["entry"][0]
    assert "resource" not in head and head["response"]["etag"] == 'W/"2"'  # after the PATCH
    posted = location_id(result["entry"][3])
    with engine.connect() as conn:
        order = conn.exec_driver_sql(f"SELECT res_id, method FROM resource_version WHERE seq > {before} "
                                     "ORDER BY seq").all()
    assert [tuple(row) for row in order] == [(deleted, "DELETE"), (posted, "POST"), (patched, "PATCH"),
                                             (put, "PUT")]


def test_conditional_delete_matching_several_fails_the_transaction_with_412(client, engine):
    for family in ("Twin", "Twin"):
        create(client, make_patient(mrn="twin", family=family))
    with nothing_written(engine):
        response = post_bundle(client, bundle(
            entry(make_patient(mrn="bystander"), "POST", "Patient"),
            entry(None, "DELETE", f"Patient?identifier={MRN}|twin")))
    assert_outcome(response, 412, expression="Bundle.entry[1].request.url", says="match 2")
