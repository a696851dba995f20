"""Batch Bundles (http.html#brules): entries are independent, each in its own transaction;
a failing entry gets a 4xx response.outcome and the others are written."""
from __future__ import annotations

from ..api.outcomes import create
from .bundles import MRN, bundle, entry, location_id, make_imaging_study, make_patient, ok, post_bundle, statuses, urn


def batch(*entries):
    return bundle(*entries, kind="batch")


def outcome_paths(response_entry: dict) -> list[str]:
    return [e for issue in response_entry["response"]["outcome"]["issue"] for e in issue.get("expression", [])]


def test_batch_with_one_bad_entry_writes_the_others(client):
    bad = make_imaging_study(status="bogus")
    result = ok(post_bundle(client, batch(entry(make_patient(mrn="b1"), "POST", "Patient"),
                                          entry(bad, "POST", "ImagingStudy"),
                                          entry(make_patient(mrn="b2"), "POST", "Patient"))))
    assert result["type"] == "batch-response"
    assert statuses(result) == ["201 Created", "422 Unprocessable Entity", "201 Created"]
    assert "Bundle.entry[1].resource.status" in outcome_paths(result["entry"][1])
    for item in (result["entry"][0], result["entry"][2]):
        assert client.get(f"/fhir/Patient/{location_id(item)}").status_code == 200
    assert client.get(f"/fhir/Patient?identifier={MRN}|b2").get_json()["total"] == 1


def test_batch_entry_without_request_fails_alone(client):
    broken = {"resource": make_patient()}
    result = ok(post_bundle(client, batch(broken, entry(make_patient(), "POST", "Patient"))))
    assert statuses(result) == ["400 Bad Request", "201 Created"]
    assert outcome_paths(result["entry"][0]) == ["Bundle.entry[0].request"]


def test_batch_entries_may_not_reference_each_other(client):
    p_url = urn()
    result = ok(post_bundle(client, batch(entry(make_patient(), "POST", "Patient", p_url),
                                          entry(make_imaging_study(patient_ref=p_url), "POST", "ImagingStudy"))))
    assert statuses(result) == ["201 Created", "400 Bad Request"]
    assert outcome_paths(result["entry"][1]) == ["Bundle.entry[1].resource.subject.reference"]


def test_batch_reads_and_conditional_writes(client):
    pid = create(client, make_patient(mrn="b3")).get_json()["id"]
    result = ok(post_bundle(client, batch(
        entry(None, "GET", f"Patient/{pid}"),
        entry(None, "GET", "Patient/missing"),
        entry(make_patient(mrn="b3"), "POST", "Patient", ifNoneExist=f"identifier={MRN}|b3"),
        entry(make_imaging_study(patient_ref=f"Patient?identifier={MRN}|b3"), "POST", "ImagingStudy"))))
    assert statuses(result) == ["200 OK", "404 Not Found", "200 OK", "201 Created"]
    assert result["entry"][0]["resource"]["id"] == pid
    assert location_id(result["entry"][2]) == pid
    study = client.get(f"/fhir/ImagingStudy/{location_id(result['entry'][3])}").get_json()
    assert study["subject"]["reference"] == f"Patient/{pid}"


def test_batch_version_conflict_is_that_entrys_412(client):
    pid = create(client, make_patient()).get_json()["id"]
    result = ok(post_bundle(client, batch(
        entry(make_patient(id=pid, family="A"), "PUT", f"Patient/{pid}", ifMatch='W/"3"'),
        entry(make_patient(), "POST", "Patient"))))
    assert statuses(result) == ["412 Precondition Failed", "201 Created"]
    assert client.get(f"/fhir/Patient/{pid}").get_json()["meta"]["versionId"] == "1"


def test_batch_prefer_minimal(client):
    result = ok(post_bundle(client, batch(entry(make_patient(), "POST", "Patient")), Prefer="return=minimal"))
    assert set(result["entry"][0]) == {"response"}


def test_the_default_limit_is_ten_thousand_entries_per_bundle():
    from fhirimg.config import LimitsSchema
    assert LimitsSchema().load({})["max_bundle_entries"] == 10_000
