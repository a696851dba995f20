"""Bad Bundles (issue 3): each is a 4xx OperationOutcome whose expression names the entry
and element, and nothing is written. Both databases."""
from __future__ import annotations

import base64
import json

import pytest

from ..api.outcomes import assert_outcome, create, nothing_written
from .bundles import (MRN, bundle, ehr_transaction, entry, make_endpoint, make_imaging_study, make_patient,
                      post_bundle, urn)


def rejected(client, engine, document, status, expression=None, says=None, **headers):
    with nothing_written(engine):
        response = post_bundle(client, document, **headers)
    return assert_outcome(response, status, expression=expression, says=says)


@pytest.mark.parametrize("kind", ["document", "collection", "searchset", "history", "message",
                                  "transaction-response"])
def test_bundle_of_another_type_is_400(client, engine, kind):
    document = ehr_transaction()
    document["type"] = kind
    rejected(client, engine, document, 400, expression="Bundle.type", says=kind)


def test_bundle_without_type_is_400(client, engine):
    document = ehr_transaction()
    del document["type"]
    rejected(client, engine, document, 400, expression="Bundle.type")


def test_a_resource_that_is_not_a_bundle_is_400(client, engine):
    rejected(client, engine, make_patient(), 400, expression="Bundle.resourceType", says="Patient")


def test_unknown_bundle_element_is_400(client, engine):
    document = ehr_transaction()
    document["colour"] = "red"
    rejected(client, engine, document, 400, expression="Bundle.colour")


def test_entry_without_request_is_400(client, engine):
    document = ehr_transaction()
    del document["entry"][1]["request"]
    rejected(client, engine, document, 400, expression="Bundle.entry[1].request", says="request")


@pytest.mark.parametrize("method", ["FETCH", None, "post"])
def test_entry_with_bad_method_is_400(client, engine, method):
    document = ehr_transaction()
    document["entry"][2]["request"]["method"] = method
    rejected(client, engine, document, 400, expression="Bundle.entry[2].request.method")


@pytest.mark.parametrize("url", ["Observation", "Observation/1", "Foo?identifier=x", "metadata",
                                 "http://elsewhere.example.org/fhir/Patient", "Patient/bad_id!", "Patient/1/2"])
def test_request_url_that_names_no_supported_type_or_form_is_400(client, engine, url):
    document = bundle(entry(make_patient(), "POST", "Patient"), entry(make_patient(), "PUT", url))
    rejected(client, engine, document, 400, expression="Bundle.entry[1].request.url")


def test_post_with_an_id_in_the_url_is_400(client, engine):
    rejected(client, engine, bundle(entry(make_patient(), "POST", "Patient/abc")), 400,
             expression="Bundle.entry[0].request.url")


def test_put_without_a_resource_is_400(client, engine):
    rejected(client, engine, bundle(entry(None, "PUT", "Patient/abc")), 400, expression="Bundle.entry[0].resource")


def test_resource_type_differing_from_the_url_is_400(client, engine):
    rejected(client, engine, bundle(entry(make_endpoint(), "POST", "Patient")), 400,
             expression="Bundle.entry[0].resource.resourceType")


@pytest.mark.parametrize("full_url", ["not a uri", "urn:uuid:1234", "urn:uuid:not-a-uuid-at-all-000000000000",
                                      "urn:oid:1.2.abc", "urn:oid:3.1", "Patient/123", "http:///Patient/1",
                                      "http://x.org/Patient/1 2"])
def test_full_url_that_is_not_a_valid_uri_is_400(client, engine, full_url):
    document = ehr_transaction()
    document["entry"][1]["fullUrl"] = full_url
    rejected(client, engine, document, 400, expression="Bundle.entry[1].fullUrl")


def test_reference_to_a_urn_uuid_not_in_the_bundle_is_400(client, engine):
    document = ehr_transaction()
    document["entry"][2]["resource"]["series"][1]["endpoint"] = [{"reference": urn()}]
    rejected(client, engine, document, 400, expression="Bundle.entry[2].resource.series[1].endpoint[0].reference",
             says="does not match the fullUrl")


def test_reference_to_an_entry_of_a_disallowed_type_is_rejected(client, engine):
    document = ehr_transaction()
    endpoint_url = document["entry"][1]["fullUrl"]
    document["entry"][2]["resource"]["subject"] = {"reference": endpoint_url}
    rejected(client, engine, document, 422, expression="Bundle.entry[2].resource.subject.reference", says="Endpoint")


def test_resource_invalid_against_r5_names_the_entry_and_element(client, engine):
    document = ehr_transaction()
    document["entry"][2]["resource"]["status"] = "bogus"
    rejected(client, engine, document, 422, expression="Bundle.entry[2].resource.status", says="bogus")


def test_unknown_nested_element_names_the_entry_and_path(client, engine):
    document = ehr_transaction()
    document["entry"][2]["resource"]["series"][1]["instance"][0]["colour"] = "red"
    rejected(client, engine, document, 400, expression="Bundle.entry[2].resource.series[1].instance[0].colour")


def test_invalid_resource_late_in_the_bundle_leaves_the_earlier_entries_unwritten(client, engine):
    document = ehr_transaction()
    document["entry"].append(entry(make_patient(birthDate="1970-13-45"), "POST", "Patient"))
    rejected(client, engine, document, 400, expression="Bundle.entry[3].resource.birthDate")


def test_same_full_url_twice_is_400(client, engine):
    p_url = urn()
    document = bundle(entry(make_patient(), "POST", "Patient", p_url), entry(make_patient(), "POST", "Patient", p_url))
    rejected(client, engine, document, 400, expression="Bundle.entry[1].fullUrl", says="only once")


def test_two_conditional_creates_for_the_same_identifier_are_400(client, engine):
    document = bundle(
        entry(make_patient(mrn="same"), "POST", "Patient", urn(), ifNoneExist=f"identifier={MRN}|same"),
        entry(make_patient(mrn="same"), "POST", "Patient", urn(), ifNoneExist=f"identifier={MRN}|same"))
    rejected(client, engine, document, 400, expression="Bundle.entry[1].request", says="only once")


def test_two_conditional_creates_matching_the_same_stored_resource_are_400(client, engine):
    create(client, make_patient(mrn="stored"))
    document = bundle(
        entry(make_patient(mrn="stored"), "PUT", f"Patient?identifier={MRN}|stored"),
        entry(make_patient(mrn="stored"), "POST", "Patient", ifNoneExist=f"identifier={MRN}|stored"))
    rejected(client, engine, document, 400, expression="Bundle.entry[0].request", says="only once")


def test_put_and_delete_of_the_same_resource_are_400(client, engine):
    pid = create(client, make_patient()).get_json()["id"]
    document = bundle(entry(make_patient(id=pid), "PUT", f"Patient/{pid}"), entry(None, "DELETE", f"Patient/{pid}"))
    rejected(client, engine, document, 400, expression="Bundle.entry[1].request")


def test_circular_conditional_references_are_400(client, engine):
    a, b = urn(), urn()
    document = bundle(entry(make_patient(), "POST", "Patient", a, ifNoneExist=f"_id={b}"),
                      entry(make_patient(), "POST", "Patient", b, ifNoneExist=f"_id={a}"))
    outcome = rejected(client, engine, document, 400, says="circular")
    paths = {e for issue in outcome["issue"] for e in issue["expression"]}
    assert paths == {"Bundle.entry[0].request", "Bundle.entry[1].request"}


def test_stale_if_match_fails_the_transaction_with_412(client, engine):
    pid = create(client, make_patient()).get_json()["id"]
    document = bundle(entry(make_patient(), "POST", "Patient"),
                      entry(make_patient(id=pid, family="New"), "PUT", f"Patient/{pid}", ifMatch='W/"7"'))
    rejected(client, engine, document, 412, expression="Bundle.entry[1].request.ifMatch")


def test_malformed_if_match_is_400(client, engine):
    pid = create(client, make_patient()).get_json()["id"]
    document = bundle(entry(make_patient(id=pid), "PUT", f"Patient/{pid}", ifMatch="yesterday"))
    rejected(client, engine, document, 400, expression="Bundle.entry[0].request.ifMatch")


def test_conditional_put_matching_two_resources_is_412(client, engine):
    create(client, make_patient(mrn="two"))
    create(client, make_patient(mrn="two"))
    document = bundle(entry(make_patient(mrn="two"), "PUT", f"Patient?identifier={MRN}|two"))
    rejected(client, engine, document, 412, expression="Bundle.entry[0].request.url")


def test_unsupported_search_parameter_in_a_condition_is_400(client, engine):
    document = bundle(entry(make_patient(), "POST", "Patient", ifNoneExist="favourite-colour=blue"))
    rejected(client, engine, document, 400, expression="Bundle.entry[0].request.ifNoneExist")


def test_get_of_a_missing_resource_fails_the_transaction(client, engine):
    document = bundle(entry(make_patient(), "POST", "Patient"), entry(None, "GET", "Patient/never-there"))
    rejected(client, engine, document, 404, expression="Bundle.entry[1].request")


def test_patch_that_breaks_the_resource_fails_the_transaction(client, engine):
    pid = create(client, make_patient()).get_json()["id"]
    operations = [{"op": "replace", "path": "/gender", "value": "robot"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(operations).encode()).decode()}
    document = bundle(entry(make_patient(), "POST", "Patient"), entry(binary, "PATCH", f"Patient/{pid}"))
    rejected(client, engine, document, 422, expression="Bundle.entry[1].resource.gender")


def test_too_many_entries_is_413(client, engine, app):
    app.config["FHIRIMG"]["limits"]["max_bundle_entries"] = 3
    document = bundle(*[entry(make_patient(), "POST", "Patient") for _ in range(4)])
    rejected(client, engine, document, 413, says="at most 3")


def test_exactly_the_maximum_number_of_entries_is_accepted(client, app):
    app.config["FHIRIMG"]["limits"]["max_bundle_entries"] = 3
    response = post_bundle(client, bundle(*[entry(make_patient(), "POST", "Patient") for _ in range(3)]))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_bundle_body_over_the_size_limit_is_413(client, engine, config):
    limit = config["limits"]["max_body_bytes"]
    document = bundle(entry(make_patient(family="x" * limit), "POST", "Patient"))
    rejected(client, engine, document, 413, says="limit")


def test_non_json_body_is_400(client, engine):
    with nothing_written(engine):
        response = client.post("/fhir", data=b'{"resourceType": "Bundle", ',
                               headers={"Content-Type": "application/fhir+json"})
    assert_outcome(response, 400, says="JSON")


def test_imaging_study_over_the_instance_count_is_still_validated_per_entry(client, engine):
    study = make_imaging_study(numberOfSeries="two")
    rejected(client, engine, bundle(entry(study, "POST", "ImagingStudy")), 400,
             expression="Bundle.entry[0].resource.numberOfSeries")


def test_if_none_match_on_a_write_is_400(client, engine):
    document = bundle(entry(make_patient(id="x1"), "PUT", "Patient/x1", ifNoneMatch="*"))
    rejected(client, engine, document, 400, expression="Bundle.entry[0].request.ifNoneMatch")


def test_conditional_reference_by_a_parameter_bundle_entries_cannot_be_matched_on_is_400(client, engine):
    document = bundle(entry(make_patient(), "POST", "Patient"),
                      entry(make_imaging_study(patient_ref="Patient?birthdate=1970-01-01"), "POST", "ImagingStudy"))
    rejected(client, engine, document, 400, expression="Bundle.entry[1].resource.subject.reference")
