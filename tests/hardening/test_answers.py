"""Issue 15, items 13, 15 and 16: identifiers anchored at their very end, each rejected
instance counted once, outcome entries with a fullUrl, empty answers without a Content-Type."""
from __future__ import annotations

import pytest

from fhirimg.auth.clients import CLIENT_ID
from fhirimg.resources import is_valid_id
from fhirimg.transfer.pipeline import TransferReport
from fhirimg.transfer.qido import Rejection, SourceStudy
from fhirimg.transfer.retrieve import RetrieveOutcome
from fhirimg.transfer.taskoutput import output_value, rejection_outputs
from fhirimg.transfer.uids import is_valid_uid

from ..factories import make_patient


@pytest.mark.parametrize("value", ["1.2.3\n", "1.2.3\r\n", "1.2.3\n4"])
def test_a_uid_with_a_trailing_newline_is_not_a_uid(value):
    assert is_valid_uid("1.2.3") and not is_valid_uid(value)


def test_ids_and_client_ids_with_a_trailing_newline_are_refused():
    assert is_valid_id("abc") and not is_valid_id("abc\n")
    assert CLIENT_ID.match("pacs") and not CLIENT_ID.match("pacs\n")


def test_a_dicomweb_uid_with_an_encoded_newline_is_400(client):
    response = client.get("/dicom-web/studies/1.2.3%0A/series")
    assert response.status_code == 400 and "StudyInstanceUID" in response.json["issue"][0]["diagnostics"]


def test_a_read_of_an_id_with_an_encoded_newline_is_400(client):
    response = client.get("/fhir/Patient/abc%0A")
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == ["Patient.id"]


def test_each_rejected_instance_is_counted_once():
    outcome = RetrieveOutcome()
    for attempt in range(5):  # the same three instances refused on each of five attempts
        for sop in ("1.1", "1.2", "1.3"):
            outcome.reject(Rejection("not-dicom", f"attempt {attempt}", "9.9", sop))
    report = TransferReport(study=SourceStudy("9"), outcome=outcome)
    outputs = rejection_outputs(report)
    assert output_value({"output": outputs}, "instances-rejected") == 3


def test_outcome_entries_of_a_searchset_have_a_urn_uuid_full_url(client):
    bundle = client.get("/fhir/Patient?colour=blue").json
    (outcome,) = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["fullUrl"].startswith("urn:uuid:") and len(outcome["fullUrl"]) == 45


def test_return_minimal_answers_without_a_content_type(client):
    response = client.post("/fhir/Patient", json=make_patient("MRN-MIN"), headers={"Prefer": "return=minimal"})
    assert response.status_code == 201 and response.data == b""
    assert "Content-Type" not in response.headers
    not_modified = client.get(response.headers["Location"].split("/_history")[0].replace("http://localhost", ""),
                              headers={"If-None-Match": response.headers["ETag"]})
    assert not_modified.status_code == 304 and "Content-Type" not in not_modified.headers
