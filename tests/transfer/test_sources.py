"""Which DICOMweb base serves a study: Endpoint choice (R5 ImagingStudy.endpoint / series.endpoint)."""
from __future__ import annotations

import pytest

from fhirimg.transfer.sources import TaskFailure, normalise_address, plan_source

from ..factories import make_endpoint
from .site import make_site


@pytest.mark.parametrize("address, base", [
    ("https://pacs.example.org/dicom-web", "https://pacs.example.org/dicom-web"),
    ("https://pacs.example.org/dicom-web/", "https://pacs.example.org/dicom-web"),
    ("https://pacs.example.org/dicom-web/studies/1.2.3", "https://pacs.example.org/dicom-web"),
    ("https://pacs.example.org/dicom-web/studies/1.2.3/series/4.5?x=1", "https://pacs.example.org/dicom-web"),
    ("https://pacs.example.org/dicom-web/studies", "https://pacs.example.org/dicom-web"),
    ("https://pacs.example.org/wado/studies-archive", "https://pacs.example.org/wado/studies-archive"),
])
def test_an_address_naming_a_study_is_cut_back_to_the_base(address, base):
    assert normalise_address(address) == base


def endpoint(site, address, code="dicom-wado-rs", status="active") -> dict:
    body = make_endpoint(address, status=status)
    body["connectionType"][0]["coding"][0]["code"] = code
    return {"reference": "Endpoint/" + site.client.post("/fhir/Endpoint", json=body).json["id"]}


def plan(site, study: dict):
    study_id = site.client.post("/fhir/ImagingStudy", json=study).json["id"]
    task = {"focus": {"reference": f"ImagingStudy/{study_id}"}}
    return plan_source(site.context().repo, task, "http://fhirimg.test/dicom-web")


def test_study_endpoint_serves_every_series_unless_a_series_has_its_own(tmp_path):
    from ..factories import make_imaging_study
    site = make_site(tmp_path)
    study = make_imaging_study(series=2, study_uid="1.2.840.1", endpoint=[
        endpoint(site, "http://fhirimg.test/dicom-web"),  # our own: never a source
        endpoint(site, "https://old.example.org/dicom-web", status="off"),
        endpoint(site, "https://fhir.example.org/fhir", code="hl7-fhir-rest"),
        endpoint(site, "https://pacs.example.org/dicom-web/studies/1.2.840.1")])
    study["series"][1]["endpoint"] = [endpoint(site, "https://vna.example.org/qido", code="dicom-qido-rs")]
    result = plan(site, study)
    assert result.study_uid == "1.2.840.1"
    assert result.base_url == "https://pacs.example.org/dicom-web"
    assert result.series_bases == {study["series"][1]["uid"]: "https://vna.example.org/qido"}


def test_study_without_a_dicomweb_endpoint_cannot_be_planned(tmp_path):
    from ..factories import make_imaging_study
    site = make_site(tmp_path)
    study = make_imaging_study(endpoint=[endpoint(site, "https://fhir.example.org/fhir", code="hl7-fhir-rest")])
    with pytest.raises(TaskFailure, match="no active Endpoint"):
        plan(site, study)
