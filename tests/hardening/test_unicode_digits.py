"""Numbers in requests are ASCII digits: "²".isdigit() is true in Python and int("²") raises,
so a superscript in _count, a version id, a frame list or a QIDO limit was a 500 (found in a
review of issue 21's routes, then everywhere the same test guarded an int())."""
from __future__ import annotations

import pytest

from ..factories import make_patient


@pytest.mark.parametrize("path", [
    "/fhir/Patient?_count=²", "/fhir/_history?_count=²", "/fhir/Patient/{id}/_history/²",
    "/fhir/AuditEvent/²", "/fhir/AuditEvent?_count=²",
    "/dicom-web/studies?limit=²", "/dicom-web/studies?offset=³", "/dicom-web/instances?limit=¹",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/²",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1,²/rendered",
])
def test_a_superscript_where_a_number_belongs_is_a_4xx_outcome(client, path):
    patient = client.post("/fhir/Patient", json=make_patient("MRN-DIGIT")).json["id"]
    response = client.get(path.replace("{id}", patient))
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert response.json["resourceType"] in ("OperationOutcome", "Bundle")


def test_if_match_with_a_superscript_is_a_4xx_outcome(client):
    patient = client.post("/fhir/Patient", json=make_patient("MRN-DIGIT2")).json
    response = client.put(f"/fhir/Patient/{patient['id']}", json=patient, headers={"If-Match": 'W/"²"'})
    assert 400 <= response.status_code < 500 and response.json["resourceType"] == "OperationOutcome"


def test_an_audit_event_id_that_is_not_a_number_matches_nothing(client):
    response = client.get("/fhir/AuditEvent?_id=²")
    assert response.status_code == 200 and response.json["resourceType"] == "Bundle"
    assert not response.json.get("entry")
