"""BALP-shaped R5 AuditEvents: valid R5 resources, one per patient, the raw query in base64,
and never a token."""
from __future__ import annotations

import base64

import pytest
from fhir.resources.auditevent import AuditEvent

from fhirimg.audit.events import Act, audit_events, outcome_code

TOKEN = "eyJhbGciOiJFUzI1NiJ9.secret-token-body.signature"


def act(**extra) -> Act:
    base = dict(interaction="search-type", recorded_ms=1_796_400_000_123, client_id="pacs-bridge",
                site="https://pacs.example.org/fhir", network="192.0.2.7", request_id="req-1", token_id="abc123")
    return Act(**{**base, **extra})


def test_a_query_of_three_patients_studies_is_three_events_one_per_patient():
    events = audit_events(act(query="modality=CT&_include=ImagingStudy:endpoint",
                              resources=["ImagingStudy/s1", "ImagingStudy/s2", "ImagingStudy/s3"]),
                          ["B", "A", "C", "A"])
    assert [e["patient"]["reference"] for e in events] == ["Patient/A", "Patient/B", "Patient/C"]
    for event in events:
        AuditEvent.model_validate(event)  # a valid R5 AuditEvent (fhir.resources)
        assert event["action"] == "E" and event["code"]["coding"][0]["code"] == "search-type"
        query = next(e for e in event["entity"] if e["role"]["coding"][0]["code"] == "24")
        assert base64.b64decode(query["query"]).decode() == "modality=CT&_include=ImagingStudy:endpoint"


def test_a_wado_series_read_names_the_study_and_the_series_uid():
    (event,) = audit_events(act(interaction="read", resources=["ImagingStudy/s1"],
                                details={"SeriesInstanceUID": "1.2.3.4"}), ["A"])
    AuditEvent.model_validate(event)
    assert event["action"] == "R"
    whats = [e.get("what", {}).get("reference") for e in event["entity"]]
    assert "ImagingStudy/s1" in whats and "Patient/A" in whats
    details = [d for e in event["entity"] for d in e.get("detail", [])]
    assert {"type": {"text": "SeriesInstanceUID"}, "valueString": "1.2.3.4"} in details
    assert {"type": {"text": "X-Request-Id"}, "valueString": "req-1"} in details


@pytest.mark.parametrize("status, code", [(200, "0"), (201, "0"), (403, "4"), (401, "4"), (500, "8")])
def test_outcomes_follow_the_status(status, code):
    assert outcome_code(status) == code


def test_a_denial_is_a_failure_event_with_its_reason_and_no_token():
    (event,) = audit_events(act(interaction="read", status=403, resources=["Patient/B"],
                                reason="Patient/B is outside what the token may read"), [None])
    AuditEvent.model_validate(event)
    assert event["outcome"]["code"]["code"] == "4" and "outside" in event["outcome"]["detail"][0]["text"]
    assert "patient" not in event
    client = event["agent"][0]
    assert client["who"]["identifier"]["value"] == "pacs-bridge"
    assert client["policy"] == ["urn:ietf:params:oauth:jti:abc123"]
    assert TOKEN not in str(event) and "secret-token-body" not in str(event)


def test_a_user_of_the_token_is_the_requestor():
    (event,) = audit_events(act(interaction="read", user="Practitioner/dr-a", resources=["ImagingStudy/s1"]), ["A"])
    AuditEvent.model_validate(event)
    requestors = [a for a in event["agent"] if a["requestor"]]
    assert [a["who"] for a in requestors] == [{"reference": "Practitioner/dr-a"}]
