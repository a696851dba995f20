"""STOW-RS (PS3.18 10.5): what is stored, what the ImagingStudy becomes, the status algebra,
and bad input refused with nothing half-stored. Both database backends."""
from __future__ import annotations

import io
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from fhirimg.store.schema import resource_version
from fhirimg.transfer.blobstore import STAGING_DIR
from fhirimg.transfer.schema import dicom_instance

from ..auth_support import authorized
from ..transfer.dicomfactory import UID_ROOT, make_study, to_part10
from .conftest import multipart
from .expected import expected_study, without_meta

DUPLICATE, MISMATCH, CANNOT_UNDERSTAND, NOT_STORAGE = 0x0111, 0xA900, 0xC000, 0x0122


def stow(client, parts: list[bytes], study: str | None = None, **kwargs):
    body, content_type = multipart(parts, **kwargs)
    path = "/dicom-web/studies" + (f"/{study}" if study else "")
    return client.post(path, data=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"})


def blobs(app) -> dict[str, bytes]:
    root = app.extensions["fhirimg.ingest"].blobstore.root if "fhirimg.ingest" in app.extensions else None
    if root is None:
        return {}
    return {p.stem: p.read_bytes() for p in root.rglob("*.dcm") if STAGING_DIR not in p.parts}


def staging_files(app) -> list:
    ingest = app.extensions.get("fhirimg.ingest")
    return list(ingest.blobstore.staging.iterdir()) if ingest else []


def rows(app) -> int:
    with app.extensions["fhirimg.engine"].connect() as conn:
        return conn.execute(select(func.count()).select_from(dicom_instance)).scalar()


def versions(app, res_type: str) -> int:
    with app.extensions["fhirimg.engine"].connect() as conn:
        return conn.execute(select(func.count()).select_from(resource_version)
                            .where(resource_version.c.res_type == res_type)).scalar()


def studies(client) -> list[dict]:
    return [e["resource"] for e in client.get("/fhir/ImagingStudy").json.get("entry", [])]


def sequence(body: dict, tag: str) -> list[dict]:
    return (body.get(tag) or {}).get("Value") or []


def failures(body: dict) -> list[int]:
    """The Failure Reason of each Failed SOP Sequence item."""
    return [item["00081197"]["Value"][0] for item in sequence(body, "00081198")]


def referenced(body: dict) -> set[str]:
    return {item["00081155"]["Value"][0] for item in sequence(body, "00081199")}


def assert_nothing_stored(app, client) -> None:
    assert rows(app) == 0 and blobs(app) == {} and staging_files(app) == []
    assert studies(client) == [] and versions(app, "ImagingStudy") == 0 and versions(app, "Patient") == 0


def rewrite(data: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for name, value in changes.items():
        setattr(ds, name, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
    return to_part10(ds)


# -- storing --------------------------------------------------------------------------------------
def test_a_study_is_stored_byte_for_byte_and_its_imaging_study_is_built_from_the_headers(app):
    client = app.test_client()
    study = make_study(series=2, instances=3, rows=16, columns=16, seed=7)
    response = stow(client, list(study.instances.values()))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/dicom+json"
    body = response.json
    assert body["00081190"]["Value"] == [f"http://localhost/dicom-web/studies/{study.study_uid}"]
    assert referenced(body) == set(study.instances) and "00081198" not in body
    for item in sequence(body, "00081199"):  # each Retrieve URL answers with the instance
        url = item["00081190"]["Value"][0].replace("http://localhost", "")
        assert client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 200
    assert blobs(app) == study.instances
    assert staging_files(app) == []
    [stored] = studies(client)
    patients = client.get("/fhir/Patient", query_string={"identifier": f"urn:fhirimg:patient-id|{study.patient_id}"})
    [patient] = [e["resource"] for e in patients.json["entry"]]
    assert without_meta(stored) == expected_study(list(study.instances.values()), f"Patient/{patient['id']}")
    assert patient["name"][0]["family"] and patient["identifier"] == [
        {"system": "urn:fhirimg:patient-id", "value": study.patient_id}]
    endpoint = client.get("/fhir/Endpoint/fhirimg-dicomweb").json
    assert endpoint["address"] == "http://localhost/dicom-web"


def test_sending_the_same_instances_again_changes_nothing(app):
    client = app.test_client()
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=8)
    assert stow(client, list(study.instances.values())).status_code == 200
    before = (versions(app, "ImagingStudy"), versions(app, "Patient"), versions(app, "Endpoint"))
    again = stow(client, list(study.instances.values()))
    assert again.status_code == 200 and referenced(again.json) == set(study.instances)
    assert (versions(app, "ImagingStudy"), versions(app, "Patient"), versions(app, "Endpoint")) == before == (1, 1, 1)
    assert blobs(app) == study.instances and staging_files(app) == []


def test_a_second_push_of_more_series_updates_the_same_imaging_study(app):
    client = app.test_client()
    study = make_study(series=2, instances=2, rows=16, columns=16, seed=9)
    first, second = study.series
    assert stow(client, list(first.instances.values()), study.study_uid).status_code == 200
    assert stow(client, list(second.instances.values()), study.study_uid).status_code == 200
    [stored] = studies(client)
    assert stored["meta"]["versionId"] == "2"
    assert [s["uid"] for s in stored["series"]] == [first.series_uid, second.series_uid]
    assert stored["numberOfInstances"] == 4 and versions(app, "Patient") == 1


def test_an_ehr_authored_imaging_study_is_completed_not_replaced(app):
    client = app.test_client()
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=10)
    patient = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Ehr"}]}).json
    ordered = {"resourceType": "ImagingStudy", "status": "registered",
               "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
               "subject": {"reference": f"Patient/{patient['id']}"}, "description": "Ordered by the EHR",
               "note": [{"text": "urgent read"}]}
    created = client.post("/fhir/ImagingStudy", json=ordered)
    assert created.status_code == 201
    response = stow(client, list(study.instances.values()))
    assert response.status_code == 200
    [stored] = studies(client)
    assert stored["id"] == created.json["id"] and stored["meta"]["versionId"] == "2"
    assert stored["description"] == "Ordered by the EHR" and stored["note"] == [{"text": "urgent read"}]
    assert stored["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert stored["status"] == "available" and stored["numberOfInstances"] == 2
    assert versions(app, "Patient") == 1  # no Patient made from the headers: the study had its subject


def test_parallel_pushes_of_one_new_study_make_one_imaging_study_and_one_patient(app):
    study = make_study(series=4, instances=2, rows=16, columns=16, seed=11)
    statuses = []

    def push(series):
        statuses.append(stow(app.test_client(), list(series.instances.values())).status_code)

    threads = [threading.Thread(target=push, args=(s,)) for s in study.series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    [stored] = studies(app.test_client())
    assert stored["numberOfSeries"] == 4 and stored["numberOfInstances"] == 8
    assert versions(app, "Patient") == 1 and rows(app) == 8


def test_a_push_is_audited_naming_patient_and_study(app):
    client = app.test_client()
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=12)
    assert stow(client, list(study.instances.values())).status_code == 200
    [stored] = studies(client)
    events = client.get("/fhir/AuditEvent", query_string={"entity": f"ImagingStudy/{stored['id']}"}).json["entry"]
    dicom = [e["resource"] for e in events
             if any(d.get("type", {}).get("text") == "service" and d.get("valueString") == "STOW-RS"
                    for entity in e["resource"]["entity"] for d in entity.get("detail", []))]
    assert len(dicom) == 1
    assert dicom[0]["patient"] == stored["subject"] and dicom[0]["code"]["coding"][0]["code"] == "create"


# -- partial and refused ------------------------------------------------------------------------
def test_a_mixed_request_stores_the_good_and_names_each_failure(app):
    client = app.test_client()
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=13)
    good = list(study.instances.values())
    other_study = rewrite(good[0], StudyInstanceUID=generate_uid(UID_ROOT), SOPInstanceUID=generate_uid(UID_ROOT))
    truncated = good[1][: len(good[1]) - 100]
    response = stow(client, [good[0], b"this is not DICOM at all", other_study, truncated, good[2]], study.study_uid)
    assert response.status_code == 202
    body = response.json
    assert referenced(body) == {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in (good[0], good[2])}
    codes = sorted(failures(body))
    assert codes == sorted([CANNOT_UNDERSTAND, MISMATCH, CANNOT_UNDERSTAND])
    assert rows(app) == 2 and staging_files(app) == []


def test_nothing_storable_is_409_and_nothing_is_written(app):
    client = app.test_client()
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=14)
    data = next(iter(study.instances.values()))
    worklist = rewrite(data, SOPClassUID="1.2.840.10008.5.1.4.31")  # a query model, not a storage class
    response = stow(client, [worklist, data], "1.2.3.4")
    assert response.status_code == 409
    assert sorted(failures(response.json)) == sorted([NOT_STORAGE, MISMATCH])
    assert_nothing_stored(app, client)
    # the refusal is in the audit trail, with its reason
    events = client.get("/fhir/AuditEvent", query_string={"outcome": "4"}).json.get("entry", [])
    assert any("refused" in (e["resource"]["outcome"].get("detail") or [{}])[0].get("text", "") for e in events)


@pytest.mark.parametrize("body, content_type, status", [
    (b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM", 'multipart/related; type="application/dicom"; boundary=b',
     400),  # no closing delimiter
    (b"", 'multipart/related; type="application/dicom"; boundary=b', 400),
    (b"{}", "application/dicom+json", 415),
    (b"--b--", 'multipart/related; type="application/dicom+xml"; boundary=b', 415),
    (b"--b--", 'multipart/related; type="application/dicom"', 400),  # no boundary
])
def test_a_malformed_request_is_refused_whole(app, body, content_type, status):
    client = app.test_client()
    response = client.post("/dicom-web/studies", data=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["diagnostics"]
    assert_nothing_stored(app, client)
    refused = client.get("/fhir/AuditEvent", query_string={"outcome": "4"}).json.get("entry", [])
    assert [e["resource"]["code"]["coding"][0]["code"] for e in refused] == ["create"]


def test_a_body_cut_short_after_good_parts_stores_none_of_them(app):
    client = app.test_client()
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=15)
    body, content_type = multipart(list(study.instances.values()))
    response = client.post("/dicom-web/studies", data=body[: len(body) - 40], headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert_nothing_stored(app, client)


def test_a_duplicate_with_other_content_is_refused_and_the_stored_copy_kept(app):
    client = app.test_client()
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=16)
    first, second = study.instances.values()
    assert stow(client, [first, second]).status_code == 200
    changed = rewrite(first, SeriesDescription="changed")
    response = stow(client, [changed])
    assert response.status_code == 409
    assert failures(response.json) == [DUPLICATE]
    assert blobs(app) == study.instances and versions(app, "ImagingStudy") == 1


def test_under_overwrite_a_duplicate_replaces_the_copy(make_app):
    app = make_app(push={"duplicate_policy": "overwrite"})
    client = app.test_client()
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=17)
    [(sop, data)] = study.instances.items()
    assert stow(client, [data]).status_code == 200
    changed = rewrite(data, SeriesDescription="changed")
    assert stow(client, [changed]).status_code == 200
    assert blobs(app) == {sop: changed} and rows(app) == 1


def test_an_instance_over_the_size_limit_is_refused(make_app):
    app = make_app(push={"max_instance_bytes": 4096})
    client = app.test_client()
    study = make_study(series=1, instances=1, rows=64, columns=64, seed=18)
    response = stow(client, list(study.instances.values()))
    assert response.status_code == 413
    assert_nothing_stored(app, client)


# -- authorization ------------------------------------------------------------------------------
@pytest.mark.parametrize("scope, status", [
    ("system/ImagingStudy.cu", 200),
    ("system/ImagingStudy.c", 200),
    ("system/ImagingStudy.rs", 403),
    ("system/Patient.cruds", 403),
])
def test_stow_needs_imaging_study_create_or_update(make_app, scope, status):
    app = make_app(anonymous=False)
    client = authorized(app, scope)
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=19)
    response = stow(client, list(study.instances.values()))
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 403:
        assert response.json["resourceType"] == "OperationOutcome" and rows(app) == 0


def test_stow_without_a_token_is_401(make_app):
    app = make_app(anonymous=False)
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=20)
    assert stow(app.test_client(), list(study.instances.values())).status_code == 401
    assert rows(app) == 0
