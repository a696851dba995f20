"""Bad input (issue 2): every case is a 4xx OperationOutcome naming what and where, and
writes nothing. Each test runs on SQLite and PostgreSQL through the `backend` fixtures."""
from __future__ import annotations

import io
import json

import pytest

from ..auth_support import authorized

from ..factories import make_imaging_study, make_patient
from .outcomes import FHIR, PATCH, assert_outcome, create, nothing_written


def post_raw(client, path: str, data: bytes, content_type: str = "application/fhir+json", **kw):
    return client.post(path, data=data, headers={"Content-Type": content_type, **kw.pop("headers", {})}, **kw)


# -- body syntax ---------------------------------------------------------------------------

def test_malformed_json_is_400(client, engine):
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", b'{"resourceType": "Patient",')
    assert_outcome(response, 400, says="not valid JSON")


@pytest.mark.parametrize("document", [[], [{"resourceType": "Patient"}], "Patient", 42, None, True])
def test_json_that_is_not_an_object_is_400(client, engine, document):
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", json.dumps(document).encode())
    assert_outcome(response, 400, expression="Resource", says="JSON object")


def test_empty_body_is_400(client, engine):
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", b"  ")
    assert_outcome(response, 400, says="empty")


def test_resource_type_not_matching_url_is_400(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_imaging_study(), headers=FHIR)
    assert_outcome(response, 400, expression="ImagingStudy.resourceType", says="does not match")


def test_missing_resource_type_is_400(client, engine):
    body = make_patient()
    del body["resourceType"]
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=body, headers=FHIR)
    assert_outcome(response, 400, expression="Resource.resourceType", says="missing")


def test_put_with_body_id_differing_from_url_id_is_400(client, engine):
    with nothing_written(engine):
        response = client.put("/fhir/Patient/a1", json=make_patient(id="b2"), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id", says="'b2'")


def test_put_without_body_id_is_400(client, engine):
    with nothing_written(engine):
        response = client.put("/fhir/Patient/a1", json=make_patient(), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id")


# -- content rules -------------------------------------------------------------------------

def test_unknown_element_is_400_naming_it(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(favouriteColour="blue"), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.favouriteColour", says="unknown element")


def test_unknown_nested_element_is_400_with_its_path(client, engine):
    study = make_imaging_study(series=2)
    study["series"][1]["colour"] = "red"
    with nothing_written(engine):
        response = client.post("/fhir/ImagingStudy", json=study, headers=FHIR)
    assert_outcome(response, 400, expression="ImagingStudy.series[1].colour")


def test_invalid_required_code_is_rejected_naming_the_element(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/ImagingStudy", json=make_imaging_study(status="bogus"), headers=FHIR)
    outcome = assert_outcome(response, 422, expression="ImagingStudy.status", says="'bogus'")
    assert outcome["issue"][0]["code"] == "code-invalid"


def test_invalid_nested_required_code_is_rejected(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(gender="robot"), headers=FHIR)
    assert_outcome(response, 422, expression="Patient.gender", says="'robot'")


@pytest.mark.parametrize("value", ["1970-13-01", "1970-02-30", "yesterday", "19700101"])
def test_invalid_date_is_400_naming_the_element(client, engine, value):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(birthDate=value), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.birthDate")


def test_invalid_datetime_in_nested_element_is_400(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/ImagingStudy", json=make_imaging_study(started="2026-03-01T25:00:00Z"),
                               headers=FHIR)
    assert_outcome(response, 400, expression="ImagingStudy.started")


def test_wrong_type_is_400(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/ImagingStudy", json=make_imaging_study(numberOfSeries="two"), headers=FHIR)
    assert_outcome(response, 400, expression="ImagingStudy.numberOfSeries")


@pytest.mark.parametrize("value,expression", [
    ({"family": None}, "Patient.name[0].family"),
    ({}, "Patient.name[0]"),
    ({"family": ""}, "Patient.name[0].family"),
    ({"family": "Doe", "given": []}, "Patient.name[0].given"),
])
def test_null_empty_object_empty_array_and_empty_string_are_400(client, engine, value, expression):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(name=[value]), headers=FHIR)
    assert_outcome(response, 400, expression=expression)


def test_top_level_null_is_400(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(gender=None), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.gender", says="null")


def test_body_id_longer_than_64_characters_is_400(client, engine):
    with nothing_written(engine):
        response = client.put("/fhir/Patient/" + "a" * 65, json=make_patient(id="a" * 65), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id")


@pytest.mark.parametrize("bad_id", ["a" * 65, "has_underscore", "sp ace", "com,ma", "ümlaut"])
def test_invalid_id_in_url_is_400(client, engine, bad_id):
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient/{bad_id}", json=make_patient(id=bad_id), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id", says="not a valid resource id")


def test_invalid_id_in_body_of_put_is_400(client, engine):
    with nothing_written(engine):
        response = client.put("/fhir/Patient/good", json=make_patient(id="bad_id!"), headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id")


def test_read_with_invalid_id_is_400(client):
    assert_outcome(client.get("/fhir/Patient/" + "x" * 65), 400, expression="Patient.id")


def test_reference_to_a_disallowed_type_is_rejected(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/ImagingStudy", json=make_imaging_study(patient_ref="Endpoint/e1"),
                               headers=FHIR)
    assert_outcome(response, 422, expression="ImagingStudy.subject.reference", says="Endpoint")


# -- HTTP level ----------------------------------------------------------------------------

def test_body_over_the_configured_limit_is_413(client, engine, config):
    limit = config["limits"]["max_body_bytes"]
    body = json.dumps(make_patient(family="x" * (limit + 10))).encode()
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", body)
    assert_outcome(response, 413, says="limit")


# gunicorn and werkzeug's server mark a chunked body as terminated; the test client needs
# to be told, or it reads no body at all when there is no Content-Length.
CHUNKED = {"wsgi.input_terminated": True}


def test_chunked_body_over_the_limit_is_413(client, engine, config):
    """No Content-Length: the limit must hold while the body streams in."""
    limit = config["limits"]["max_body_bytes"]
    body = json.dumps(make_patient(family="x" * (limit + 10))).encode()
    with nothing_written(engine):
        response = client.post("/fhir/Patient", input_stream=io.BytesIO(body),
                               headers={"Content-Type": "application/fhir+json", "Transfer-Encoding": "chunked"},
                               environ_overrides=CHUNKED)
    assert_outcome(response, 413)


def test_chunked_body_under_the_limit_is_accepted(client):
    body = json.dumps(make_patient()).encode()
    response = client.post("/fhir/Patient", input_stream=io.BytesIO(body),
                           headers={"Content-Type": "application/fhir+json", "Transfer-Encoding": "chunked"},
                               environ_overrides=CHUNKED)
    assert response.status_code == 201, response.get_data(as_text=True)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "image/png"])
def test_unsupported_content_type_is_415(client, engine, content_type):
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", json.dumps(make_patient()).encode(), content_type)
    assert_outcome(response, 415, says="not supported")


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "application/xml", "text/xml"])
def test_xml_body_is_415(client, engine, content_type):
    with nothing_written(engine):
        response = post_raw(client, "/fhir/Patient", b"<Patient xmlns='http://hl7.org/fhir'/>", content_type)
    assert_outcome(response, 415, says="XML")


@pytest.mark.parametrize("accept", ["application/fhir+xml", "application/xml", "text/html"])
def test_xml_only_accept_is_406_answered_in_json(client, engine, accept):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(), headers={**FHIR, "Accept": accept})
    assert_outcome(response, 406)


def test_format_xml_is_406(client):
    assert_outcome(client.get("/fhir/metadata?_format=xml"), 406, says="_format")


def test_unknown_resource_type_is_404(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir/Observation", json={"resourceType": "Observation"}, headers=FHIR)
    assert_outcome(response, 404, says="Observation")
    assert_outcome(client.get("/fhir/Foo/1"), 404, says="Foo")
    assert_outcome(client.get("/fhir/Foo/1/_history/1"), 404, says="Foo")


def test_unknown_path_is_404(client):
    assert_outcome(client.get("/fhir/Patient/1/2/3/4"), 404)


@pytest.mark.parametrize("method,path,allowed", [
    ("POST", "/fhir/Patient/p1", {"GET", "PUT", "DELETE", "PATCH"}),
    ("PUT", "/fhir/Patient/p1/_history/1", {"GET"}),
    ("DELETE", "/fhir/metadata", {"GET"}),
])
def test_method_not_allowed_is_405_with_allow(client, engine, method, path, allowed):
    with nothing_written(engine):
        response = client.open(path, method=method, json=make_patient(id="p1"), headers=FHIR)
    assert_outcome(response, 405, says=method)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_stale_if_match_on_delete_is_412(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"2"'})
    assert_outcome(response, 412, says="version 2")


def test_stale_if_match_on_patch_is_412(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient/{pid}", json=[{"op": "replace", "path": "/gender", "value": "male"}],
                                headers={**PATCH, "If-Match": 'W/"5"'})
    assert_outcome(response, 412)


def test_malformed_if_match_is_400(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient/{pid}", json=make_patient(id=pid),
                              headers={**FHIR, "If-Match": "yesterday"})
    assert_outcome(response, 400, expression="If-Match")


@pytest.mark.parametrize("version", ["abc", "1.0", "-1", "99"])
def test_vread_of_non_numeric_or_missing_version_is_404(client, version):
    pid = create(client, make_patient()).json["id"]
    assert_outcome(client.get(f"/fhir/Patient/{pid}/_history/{version}"), 404, says=version)


def test_read_of_unknown_id_is_404(client):
    assert_outcome(client.get("/fhir/Patient/never-created"), 404, says="never-created")


# -- JSON Patch ----------------------------------------------------------------------------

@pytest.mark.parametrize("operations,status", [
    ({"op": "replace", "path": "/gender", "value": "male"}, 400),  # not an array
    ([{"op": "frobnicate", "path": "/gender"}], 400),
    ([{"op": "replace", "value": "male"}], 400),  # no path
    ([{"op": "remove", "path": "/nonexistent"}], 422),
    ([{"op": "test", "path": "/gender", "value": "male"}], 422),
])
def test_invalid_json_patch_is_rejected(client, engine, operations, status):
    pid = create(client, make_patient(gender="female")).json["id"]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient/{pid}", json=operations, headers=PATCH)
    assert_outcome(response, status, expression="Patch")


def test_json_patch_that_changes_the_id_is_422(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient/{pid}", json=[{"op": "replace", "path": "/id", "value": "other"}],
                                headers=PATCH)
    assert_outcome(response, 422, expression="Patient.id")


def test_json_patch_producing_an_invalid_resource_is_rejected(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient/{pid}",
                                json=[{"op": "add", "path": "/birthDate", "value": "not-a-date"}], headers=PATCH)
    assert_outcome(response, 400, expression="Patient.birthDate")


def test_json_patch_with_json_content_type_is_415(client, engine):
    pid = create(client, make_patient()).json["id"]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient/{pid}", json=[{"op": "remove", "path": "/gender"}], headers=FHIR)
    assert_outcome(response, 415, says="json-patch")


# --- unexpected server errors: 500, OperationOutcome, request id, no stack trace ------------

SECRET_DETAIL = "password=hunter2 in /srv/fhirimg/secret.py"


@pytest.fixture
def failing_client(app):
    """The real app with one extra route that fails the way a bug would."""
    def explode():
        raise RuntimeError(SECRET_DETAIL)

    app.add_url_rule("/fhir/$explode", "explode", explode, methods=["GET", "POST"])
    return authorized(app)


def test_unexpected_error_is_500_outcome_with_request_id_and_no_trace(failing_client, caplog):
    with caplog.at_level("ERROR", logger="fhirimg"):
        response = failing_client.get("/fhir/$explode")
    outcome = assert_outcome(response, 500)
    request_id = response.headers["X-Request-Id"]
    assert len(request_id) >= 16
    assert outcome["issue"][0]["code"] == "exception"
    assert request_id in outcome["issue"][0]["diagnostics"]
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "RuntimeError" not in body and "hunter2" not in body
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info and SECRET_DETAIL in str(logged[0].exc_info[1])


def test_unexpected_error_uses_the_client_request_id(failing_client, caplog):
    with caplog.at_level("ERROR", logger="fhirimg"):
        response = failing_client.post("/fhir/$explode", headers={"X-Request-Id": "client-abc.123"})
    assert response.status_code == 500
    assert response.headers["X-Request-Id"] == "client-abc.123"
    assert "client-abc.123" in response.get_json()["issue"][0]["diagnostics"]
    assert any("client-abc.123" in r.getMessage() for r in caplog.records)


def test_unsafe_client_request_id_is_replaced(failing_client):
    unsafe = "<script>alert(1)</script> " + "x" * 80
    response = failing_client.get("/fhir/$explode", headers={"X-Request-Id": unsafe})
    assert response.headers["X-Request-Id"] != unsafe and "<" not in response.headers["X-Request-Id"]
    assert response.headers["X-Request-Id"] in response.get_json()["issue"][0]["diagnostics"]


def test_every_answer_carries_a_request_id(client):
    ok = client.get("/fhir/metadata")
    failed = client.get("/fhir/Patient/nope")
    assert ok.headers["X-Request-Id"] and failed.headers["X-Request-Id"]
    assert ok.headers["X-Request-Id"] != failed.headers["X-Request-Id"]
