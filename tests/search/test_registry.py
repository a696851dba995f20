"""The registry carries the R5 definitions and the CapabilityStatement advertises exactly them."""
from __future__ import annotations

import pytest

from fhirimg.search import registry

R5_IMAGING_STUDY = {"based-on", "body-site", "body-structure", "dicom-class", "encounter", "endpoint",
                    "identifier", "instance", "modality", "patient", "performer", "reason", "referrer",
                    "series", "started", "status", "subject"}
R5_ENDPOINT = {"connection-type", "identifier", "name", "organization", "payload-type", "status"}
COMMON = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_has"}


def names(res_type):
    return {p.name for p in registry.parameters_for(res_type)}


def test_imaging_study_has_every_r5_parameter_and_no_interpreter():
    assert R5_IMAGING_STUDY | COMMON <= names("ImagingStudy")
    assert "interpreter" not in names("ImagingStudy")


def test_endpoint_parameters_are_the_r5_ones():
    assert names("Endpoint") == R5_ENDPOINT | COMMON


def test_r5_facts_the_issue_names():
    assert registry.parameter("ImagingStudy", "modality").expression == "ImagingStudy.series.modality"
    assert registry.parameter("ImagingStudy", "dicom-class").expression == "ImagingStudy.series.instance.sopClass"
    assert registry.parameter("ImagingStudy", "reason").expression is None
    assert registry.parameter("ImagingStudy", "endpoint").targets == ("Endpoint",)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_capability_statement_lists_parameters_includes_and_honest_reason(client):
    statement = client.get("/fhir/metadata").get_json()
    study = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy")
    listed = {p["name"]: p for p in study["searchParam"]}
    assert R5_IMAGING_STUDY <= set(listed)
    assert "indexes nothing" in listed["reason"]["documentation"]
    assert "ImagingStudy:endpoint" in study["searchInclude"]
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "ImagingStudy:subject" in patient["searchRevInclude"]
