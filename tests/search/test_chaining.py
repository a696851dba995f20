"""Chaining and reverse chaining (search.html#chaining, #has), on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from ..factories import make_endpoint, make_imaging_study, make_patient
from .helpers import match_ids, search


@pytest.fixture
def world(repo):
    wado = repo.create("Endpoint", make_endpoint()).res_id
    other = make_endpoint(address="http://127.0.0.1:9/x")
    other["connectionType"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                            "code": "dicom-qido-rs"}]}]
    qido = repo.create("Endpoint", other).res_id
    alice = repo.create("Patient", make_patient(mrn="A-1", family="Alice")).res_id
    bob = repo.create("Patient", make_patient(mrn="B-2", family="Bob")).res_id
    studies = {
        "alice_ct": repo.create("ImagingStudy", make_imaging_study(f"Patient/{alice}", modality="CT",
                                                                   endpoint=[{"reference": f"Endpoint/{wado}"}])).res_id,
        "alice_mr": repo.create("ImagingStudy", make_imaging_study(f"Patient/{alice}", modality="MR")).res_id,
        "bob_ct": repo.create("ImagingStudy", make_imaging_study(f"Patient/{bob}", modality="CT")).res_id,
    }
    # a series-level endpoint counts for the endpoint parameter too
    series_level = make_imaging_study(f"Patient/{bob}", modality="US")
    series_level["series"][0]["endpoint"] = [{"reference": f"Endpoint/{qido}"}]
    studies["bob_us"] = repo.create("ImagingStudy", series_level).res_id
    return {"alice": alice, "bob": bob, "wado": wado, "qido": qido, **studies}


@pytest.mark.parametrize("query", ["subject:Patient.identifier=A-1", "patient.identifier=A-1",
                                   "subject:Patient.family=ali",
                                   "patient.identifier=http://hospital.example.org/mrn|A-1"])
def test_chain_to_patient(client, world, query):
    assert match_ids(search(client, f"ImagingStudy?{query}")) == {world["alice_ct"], world["alice_mr"]}


def test_chain_to_endpoint_study_and_series_level(client, world):
    assert match_ids(search(client, "ImagingStudy?endpoint.connection-type=dicom-wado-rs")) == {world["alice_ct"]}
    assert match_ids(search(client, "ImagingStudy?endpoint.connection-type=dicom-qido-rs")) == {world["bob_us"]}


def test_chain_combined_with_other_criteria(client, world):
    got = match_ids(search(client, "ImagingStudy?patient.identifier=A-1&modality=MR"))
    assert got == {world["alice_mr"]}


def test_has_reverse_chain(client, world):
    assert match_ids(search(client, "Patient?_has:ImagingStudy:subject:modality=MR")) == {world["alice"]}
    assert match_ids(search(client, "Patient?_has:ImagingStudy:subject:modality=CT")) == {world["alice"], world["bob"]}
    assert match_ids(search(client, "Endpoint?_has:ImagingStudy:endpoint:patient=" + world["bob"])) == {world["qido"]}


def test_has_combined_with_chain(client, world):
    got = match_ids(search(client, "Patient?_has:ImagingStudy:subject:endpoint.connection-type=dicom-wado-rs"))
    assert got == {world["alice"]}


def test_bad_has_is_400(client, world):
    response = client.get("/fhir/Patient?_has:ImagingStudy:modality:status=available")
    assert response.status_code == 400
    assert "reference parameter" in response.get_json()["issue"][0]["diagnostics"]
