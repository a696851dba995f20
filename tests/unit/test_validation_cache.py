"""Contents found valid are remembered; anything else is validated every time."""
from __future__ import annotations

import pytest

from fhirimg import resources
from fhirimg.errors import Invalid, Unprocessable
from fhirimg.resources import ValidContents, validate_resource

ENDPOINT = {"resourceType": "Endpoint", "status": "active", "address": "https://pacs.example.org/dicom-web",
            "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                            "code": "dicom-wado-rs"}]}]}


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = resources.check_resource

    def check(resource, expected_type=None):
        calls.append(resource.get("status") if isinstance(resource, dict) else None)
        return original(resource, expected_type)

    monkeypatch.setattr(resources, "check_resource", check)
    monkeypatch.setattr(resources, "VALID_CONTENTS", ValidContents(max_entries=2))
    return calls


def test_the_same_valid_content_is_checked_once(counted):
    for _ in range(3):
        validate_resource(dict(ENDPOINT), "Endpoint")
    assert len(counted) == 1
    validate_resource(ENDPOINT)  # another expected type is another key
    assert len(counted) == 2


def test_invalid_content_is_refused_every_time(counted):
    bad = dict(ENDPOINT, status="bogus")
    for _ in range(2):
        with pytest.raises(Unprocessable):
            validate_resource(bad, "Endpoint")
    assert counted == ["bogus", "bogus"]
    with pytest.raises(Invalid):
        validate_resource(dict(ENDPOINT), "Patient")  # valid content, wrong type: never a hit


def test_a_changed_content_is_checked_again_and_the_oldest_entry_goes(counted):
    validate_resource(dict(ENDPOINT), "Endpoint")
    validate_resource(dict(ENDPOINT, status="off"), "Endpoint")
    validate_resource(dict(ENDPOINT, status="error"), "Endpoint")  # the first one drops out (2 kept)
    validate_resource(dict(ENDPOINT), "Endpoint")
    assert counted == ["active", "off", "error", "active"]
    with pytest.raises(Invalid):
        validate_resource(dict(ENDPOINT, address=""), "Endpoint")
