"""Versioned and conditional reads, If-Match, Prefer, Accept/_format and _pretty
(http.html#concurrency, #cread, #ops, #mime-type, #parameters)."""
from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from ..factories import make_patient
from .outcomes import FHIR, PATCH, assert_outcome, create, nothing_written


@pytest.fixture
def patient(client) -> dict:
    return create(client, make_patient()).get_json()


# --- If-Match on writes ----------------------------------------------------------------

@pytest.mark.parametrize("etag", ['W/"1"', '"1"'])
def test_update_with_current_if_match_succeeds(client, patient, etag):
    response = client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="male"),
                          headers={**FHIR, "If-Match": etag})
    assert response.status_code == 200 and response.headers["ETag"] == 'W/"2"'


def test_update_with_stale_if_match_is_412_and_writes_nothing(client, engine, patient):
    client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="male"), headers=FHIR)
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="other"),
                              headers={**FHIR, "If-Match": 'W/"1"'})
    assert_outcome(response, 412, says="version")


def test_patch_and_delete_honour_current_if_match(client, patient):
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    patched = client.patch(f"/fhir/Patient/{patient['id']}", json=ops, headers={**PATCH, "If-Match": 'W/"1"'})
    assert patched.status_code == 200 and patched.headers["ETag"] == 'W/"2"'
    deleted = client.delete(f"/fhir/Patient/{patient['id']}", headers={"If-Match": 'W/"2"'})
    assert deleted.status_code == 200 and deleted.headers["ETag"] == 'W/"3"'


# --- conditional read --------------------------------------------------------------------

@pytest.mark.parametrize("tag", ['W/"1"', '"1"', '*', 'W/"9", W/"1"'])
def test_read_with_matching_if_none_match_is_304_without_body(client, patient, tag):
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-None-Match": tag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == 'W/"1"'


def test_read_with_other_if_none_match_is_200(client, patient):
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-None-Match": 'W/"0"'})
    assert response.status_code == 200 and response.get_json()["id"] == patient["id"]


def test_read_after_update_with_old_etag_is_200_with_new_version(client, patient):
    client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="male"), headers=FHIR)
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 200 and response.get_json()["meta"]["versionId"] == "2"


def test_read_if_modified_since_last_modified_is_304(client, patient):
    last_modified = client.get(f"/fhir/Patient/{patient['id']}").headers["Last-Modified"]
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-Modified-Since": last_modified})
    assert response.status_code == 304 and response.data == b""


def test_read_if_modified_since_an_earlier_time_is_200(client, patient):
    last_modified = parsedate_to_datetime(client.get(f"/fhir/Patient/{patient['id']}").headers["Last-Modified"])
    earlier = format_datetime(last_modified - timedelta(seconds=1), usegmt=True)
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-Modified-Since": earlier})
    assert response.status_code == 200


def test_read_with_unparseable_if_modified_since_is_200(client, patient):
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-Modified-Since": "last tuesday"})
    assert response.status_code == 200


def test_last_modified_matches_meta_last_updated(client, patient):
    response = client.get(f"/fhir/Patient/{patient['id']}")
    header = parsedate_to_datetime(response.headers["Last-Modified"])
    meta = datetime.fromisoformat(response.get_json()["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert header == meta.replace(microsecond=0)


# --- Prefer: return ----------------------------------------------------------------------

def test_create_with_return_minimal_has_no_body_but_headers(client):
    response = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR, "Prefer": "return=minimal"})
    assert response.status_code == 201 and response.data == b""
    assert response.headers["ETag"] == 'W/"1"'
    assert "/fhir/Patient/" in response.headers["Location"] and response.headers["Location"].endswith("/_history/1")
    assert response.headers["Last-Modified"]


def test_create_with_return_representation_returns_the_stored_resource(client):
    response = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR, "Prefer": "return=representation"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["resourceType"] == "Patient" and body["meta"]["versionId"] == "1"
    assert response.headers["Location"].endswith(f"/Patient/{body['id']}/_history/1")


def test_create_with_return_operation_outcome_returns_an_outcome(client):
    response = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR, "Prefer": "return=OperationOutcome"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "information"
    assert response.headers["Location"].endswith("/_history/1")


@pytest.mark.parametrize("prefer,kind", [("return=minimal", None), ("return=representation", "Patient"),
                                         ("return=OperationOutcome", "OperationOutcome"),
                                         ("handling=strict, return=minimal", None)])
def test_update_and_patch_honour_prefer_return(client, patient, prefer, kind):
    update = client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="male"),
                        headers={**FHIR, "Prefer": prefer})
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    patch = client.patch(f"/fhir/Patient/{patient['id']}", json=ops, headers={**PATCH, "Prefer": prefer})
    for response, version in ((update, "2"), (patch, "3")):
        assert response.status_code == 200
        assert response.headers["ETag"] == f'W/"{version}"'
        if kind is None:
            assert response.data == b""
        else:
            assert response.get_json()["resourceType"] == kind


def test_unknown_prefer_return_falls_back_to_representation(client):
    response = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR, "Prefer": "return=everything"})
    assert response.status_code == 201 and response.get_json()["resourceType"] == "Patient"


# --- Accept and _format --------------------------------------------------------------------

@pytest.mark.parametrize("accept,served", [
    ("", "application/fhir+json"),
    ("*/*", "application/fhir+json"),
    ("application/fhir+json", "application/fhir+json"),
    ("application/json", "application/json"),
    ("application/json+fhir", "application/fhir+json"),
    ("application/fhir+xml;q=0.9, application/json;q=0.5", "application/json"),
    ("text/html, application/fhir+json;q=0.1", "application/fhir+json"),
])
def test_accept_selects_a_json_media_type(client, patient, accept, served):
    response = client.get(f"/fhir/Patient/{patient['id']}", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"{served}; charset=utf-8"


@pytest.mark.parametrize("fmt,served", [("json", "application/fhir+json"),
                                        ("application/fhir+json", "application/fhir+json"),
                                        ("application/json", "application/json")])
def test_format_parameter_wins_over_accept(client, patient, fmt, served):
    response = client.get(f"/fhir/Patient/{patient['id']}", query_string={"_format": fmt},
                          headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"{served}; charset=utf-8"


@pytest.mark.parametrize("fmt", ["xml", "application/fhir+xml", "text/xml", "ttl", "html"])
def test_format_that_is_not_json_is_406_with_outcome(client, patient, fmt):
    response = client.get(f"/fhir/Patient/{patient['id']}", query_string={"_format": fmt})
    assert_outcome(response, 406, says="_format")


def test_xml_accept_on_a_write_is_406_and_writes_nothing(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(),
                               headers={**FHIR, "Accept": "application/fhir+xml"})
    assert_outcome(response, 406, says="XML")


def test_xml_body_is_415_with_outcome_and_writes_nothing(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", data="<Patient xmlns='http://hl7.org/fhir'/>",
                               headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(response, 415, says="XML")


def test_json_body_with_charset_parameter_is_accepted(client):
    response = client.post("/fhir/Patient", json=make_patient(),
                           headers={"Content-Type": "application/fhir+json; charset=utf-8"})
    assert response.status_code == 201


def test_plain_json_content_type_is_accepted(client):
    response = client.post("/fhir/Patient", json=make_patient(), headers={"Content-Type": "application/json"})
    assert response.status_code == 201


# --- _pretty -------------------------------------------------------------------------------

def test_pretty_true_indents_the_answer(client, patient):
    response = client.get(f"/fhir/Patient/{patient['id']}?_pretty=true")
    text = response.get_data(as_text=True)
    assert text.startswith("{\n  \"resourceType\"") and "\n    " in text
    assert response.get_json() == client.get(f"/fhir/Patient/{patient['id']}").get_json()


@pytest.mark.parametrize("query", ["", "?_pretty=false"])
def test_answer_is_compact_unless_pretty(client, patient, query):
    assert b"\n" not in client.get(f"/fhir/Patient/{patient['id']}{query}").data


def test_pretty_applies_to_errors_too(client):
    response = client.get("/fhir/Patient/unknown-id?_pretty=true")
    assert response.status_code == 404
    assert response.get_data(as_text=True).startswith("{\n")
