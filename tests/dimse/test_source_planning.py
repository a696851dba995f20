"""DIMSE sources without a peer: the Endpoint address, which Endpoint wins, presentation contexts."""
from __future__ import annotations

import pytest

from fhirimg.dimse.scu import (MAX_CONTEXTS, STORAGE_SYNTAXES, DimseAddress, DimseError, InvalidDimseAddress,
                               parse_dimse_address, retrieve_contexts)
from fhirimg.transfer.sources import DIMSE_SYSTEM, TaskFailure, plan_source

from ..factories import make_endpoint, make_imaging_study
from ..transfer.site import make_site

CT = "1.2.840.10008.5.1.4.1.1.2"
GET, MOVE = "1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.2.2"


@pytest.mark.parametrize("address, expected", [
    ("dicom://ORTHANC@127.0.0.1:4242", DimseAddress("ORTHANC", "127.0.0.1", 4242)),
    ("dicom://PACS_1@pacs.Example.org:104", DimseAddress("PACS_1", "pacs.example.org", 104)),
    ("DICOM://PACS@[::1]:11112", DimseAddress("PACS", "::1", 11112)),
    ("dicom://MY%20PACS@pacs:104", DimseAddress("MY PACS", "pacs", 104)),
])
def test_a_dicom_address_names_the_called_ae_the_host_and_the_port(address, expected):
    assert parse_dimse_address(address) == expected


@pytest.mark.parametrize("address", [
    "dicom://ORTHANC@127.0.0.1",  # no port: no silent 104
    "dicom://127.0.0.1:4242",  # no AE title
    "dicom://ORTHANC@127.0.0.1:4242/",  # a path
    "dicom://ORTHANC@127.0.0.1:4242?x=1",
    "dicom://ORTHANC:secret@127.0.0.1:4242",  # a password (':' is not an AE character here)
    "dicom://A%5CB@pacs:104",  # a backslash separates values (PS3.5 AE)
    "dicom://SEVENTEEN_CHARS_AE@pacs:104",
    "dicom://%20PACS@pacs:104",  # leading space
    "dicom://PACS@pacs:0",
    "dicom://PACS@pacs:65536",
    "dicom://PACS@pa_cs:104",
    "dicom://PACS@[fe80::1%eth0]:104",
    "http://pacs/dicom-web",
    "tcp://pacs:104",
    "",
])
def test_anything_else_is_not_a_dicom_address(address):
    with pytest.raises(InvalidDimseAddress):
        parse_dimse_address(address)


def dimse_endpoint(site, address: str, system: str = DIMSE_SYSTEM) -> dict:
    body = make_endpoint(address)
    body["connectionType"] = [{"coding": [{"system": system, "code": "dicom-dimse"}]}]
    response = site.client.post("/fhir/Endpoint", json=body)
    assert response.status_code == 201, response.json
    return {"reference": "Endpoint/" + response.json["id"]}


def planned(site, study: dict):
    study_id = site.client.post("/fhir/ImagingStudy", json=study).json["id"]
    return plan_source(site.context().repo, {"focus": {"reference": f"ImagingStudy/{study_id}"}},
                       "http://fhirimg.test/dicom-web")


def test_a_study_with_only_a_dimse_endpoint_is_planned_over_dimse(tmp_path):
    site = make_site(tmp_path)
    study = make_imaging_study(series=2, study_uid="1.2.840.7", endpoint=[dimse_endpoint(site, "dicom://PACS@pacs:104")])
    study["series"][1]["endpoint"] = [dimse_endpoint(site, "dicom://ARCHIVE@archive:11112")]
    plan = planned(site, study)
    assert plan.is_dimse and plan.dimse_address == "dicom://PACS@pacs:104" and plan.base_url == ""
    assert plan.series_dimse == {study["series"][1]["uid"]: "dicom://ARCHIVE@archive:11112"}


def test_dicomweb_wins_when_a_study_has_both(tmp_path):
    site = make_site(tmp_path)
    web = {"reference": "Endpoint/" + site.client.post("/fhir/Endpoint", json=make_endpoint(
        "https://pacs.example.org/dicom-web")).json["id"]}
    plan = planned(site, make_imaging_study(endpoint=[dimse_endpoint(site, "dicom://PACS@pacs:104"), web]))
    assert not plan.is_dimse and plan.base_url == "https://pacs.example.org/dicom-web"


def test_the_code_is_recognised_under_the_terminology_system_too(tmp_path):
    site = make_site(tmp_path)
    endpoint = dimse_endpoint(site, "dicom://PACS@pacs:104",
                              system="http://terminology.hl7.org/CodeSystem/endpoint-connection-type")
    assert planned(site, make_imaging_study(endpoint=[endpoint])).is_dimse


def test_a_malformed_dimse_address_fails_the_plan_and_names_the_endpoint(tmp_path):
    site = make_site(tmp_path)
    endpoint = dimse_endpoint(site, "dicom://PACS@pacs")
    with pytest.raises(TaskFailure, match=endpoint["reference"] + r".*not dicom://AET@host:port"):
        planned(site, make_imaging_study(endpoint=[endpoint]))


def test_retrieve_of_a_study_with_a_malformed_dimse_address_is_422(tmp_path):
    site = make_site(tmp_path)
    endpoint = dimse_endpoint(site, "dicom://PACS@pacs:99999")
    study_id = site.client.post("/fhir/ImagingStudy", json=make_imaging_study(endpoint=[endpoint])).json["id"]
    response = site.client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve")
    assert response.status_code == 422 and "out of range" in response.json["issue"][0]["diagnostics"]


def test_a_retrieve_of_a_dimse_study_is_accepted(tmp_path):
    site = make_site(tmp_path)
    endpoint = dimse_endpoint(site, "dicom://PACS@pacs:104")
    study_id = site.client.post("/fhir/ImagingStudy", json=make_imaging_study(endpoint=[endpoint])).json["id"]
    assert site.client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve").status_code == 202


def abstract_syntaxes(contexts) -> list[str]:
    return [str(cx.abstract_syntax) for cx in contexts]


def test_each_class_gets_a_context_per_transfer_syntax_when_they_fit():
    contexts, roles = retrieve_contexts({CT})
    assert abstract_syntaxes(contexts)[:2] == [GET, MOVE]
    storage = contexts[2:]
    assert [str(cx.transfer_syntax[0]) for cx in storage] == [str(s) for s in STORAGE_SYNTAXES]
    assert [(str(r.sop_class_uid), r.scu_role, r.scp_role) for r in roles] == [(CT, False, True)]


def test_many_classes_share_one_context_each_and_stay_under_128():
    classes = {f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, 60)}
    contexts, roles = retrieve_contexts(classes)
    assert len(contexts) == 2 + 59 <= MAX_CONTEXTS and len(roles) == 59
    assert all(len(cx.transfer_syntax) == len(STORAGE_SYNTAXES) for cx in contexts[2:])


def test_unknown_classes_propose_every_storage_class_within_the_limit():
    contexts, roles = retrieve_contexts(None)
    assert MAX_CONTEXTS - 8 <= len(contexts) <= MAX_CONTEXTS and len(roles) == len(contexts) - 2


def test_more_classes_than_an_association_carries_is_an_error():
    with pytest.raises(DimseError, match="more than one association can carry"):
        retrieve_contexts({f"1.2.3.{n}" for n in range(200)})


def test_a_move_only_association_proposes_no_storage_context():
    contexts, roles = retrieve_contexts({CT}, mode="move")
    assert abstract_syntaxes(contexts) == [MOVE] and roles == []
