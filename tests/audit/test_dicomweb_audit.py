"""DICOMweb accesses in the audit trail: a WADO read names the ImagingStudy and the UIDs,
a QIDO query keeps its raw query, one event per patient (BALP PatientRead/PatientQuery)."""
from __future__ import annotations

import pytest

from ..factories import make_imaging_study, make_patient
from ..transfer.dicomfactory import make_study
from ..services import database_url_of
from ..transfer.site import make_site
from .trail import all_events, code_of, details_of, events_of, patient_of, query_of, whats


@pytest.fixture
def site(tmp_path, database):
    """A transfer site on SQLite and on PostgreSQL (its private schema)."""
    return make_site(tmp_path, database_url=database_url_of(database))


def with_patient(site, study, mrn) -> tuple[str, str]:
    patient = site.client.post("/fhir/Patient", json=make_patient(mrn)).json["id"]
    body = make_imaging_study(f"Patient/{patient}", study_uid=study.study_uid)
    return patient, site.client.post("/fhir/ImagingStudy", json=body).json["id"]


def engine_of(site):
    return site.app.extensions["fhirimg.engine"]


def test_a_wado_series_retrieve_is_one_read_event_naming_the_study_and_the_series(site):
    study = make_study(series=2, instances=2, rows=16, columns=16, seed=7, patient_id="PAT-W")
    site.store(study)
    patient, study_id = with_patient(site, study, "MRN-W")
    series = study.series[1].series_uid
    response = site.client.get(f"/dicom-web/studies/{study.study_uid}/series/{series}",
                               headers={"X-Request-Id": "req-wado"})
    assert response.status_code == 200
    (event,) = events_of(engine_of(site), "req-wado")
    assert code_of(event) == "read" and event["action"] == "R"
    assert f"ImagingStudy/{study_id}" in whats(event) and patient_of(event) == f"Patient/{patient}"
    details = details_of(event)
    assert details["SeriesInstanceUID"] == series and details["StudyInstanceUID"] == study.study_uid
    assert details["service"] == "WADO-RS"


def test_frames_and_metadata_reads_name_the_instance(site):
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=8, patient_id="PAT-F")
    site.store(study)
    with_patient(site, study, "MRN-F")
    series = study.series[0]
    sop = next(iter(series.instances))
    base = f"/dicom-web/studies/{study.study_uid}/series/{series.series_uid}/instances/{sop}"
    assert site.client.get(base + "/metadata", headers={"X-Request-Id": "req-meta"}).status_code == 200
    assert site.client.get(base + "/frames/1", headers={"X-Request-Id": "req-frames",
                                                         "Accept": "multipart/related; type=application/octet-stream"}
                           ).status_code == 200
    assert details_of(events_of(engine_of(site), "req-meta")[0])["SOPInstanceUID"] == sop
    assert details_of(events_of(engine_of(site), "req-frames")[0])["frames"] == "1"


def test_a_qido_query_over_two_patients_is_two_query_events_with_the_raw_query(site):
    first, second = (make_study(series=1, instances=1, rows=16, columns=16, seed=s, patient_id=f"PAT-{s}")
                     for s in (9, 10))
    for study in (first, second):
        site.store(study)
    patients = sorted(with_patient(site, study, f"MRN-Q{n}")[0] for n, study in enumerate((first, second)))
    response = site.client.get("/dicom-web/studies?limit=10", headers={"X-Request-Id": "req-qido"})
    assert response.status_code == 200 and len(response.json) == 2
    events = events_of(engine_of(site), "req-qido")
    assert sorted(patient_of(e) for e in events) == [f"Patient/{p}" for p in patients]
    assert {query_of(e) for e in events} == {"limit=10"} and {code_of(e) for e in events} == {"search-type"}


def test_retrieve_operation_names_the_study_and_its_task(site):
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=11, patient_id="PAT-R")
    study_id = site.add_study("http://127.0.0.1:9/dicom-web", study.study_uid)
    task_id = site.start_retrieve(study_id)
    (operation,) = [e for e in all_events(engine_of(site)) if code_of(e) == "operation"]
    assert f"ImagingStudy/{study_id}" in whats(operation) and f"Task/{task_id}" in whats(operation)
    assert details_of(operation)["operation"] == "$retrieve"


def test_a_thumbnail_or_a_rendered_frame_is_a_read_of_the_study(site):
    """Issue 21: a rendered thumbnail is a read of the study, audited like any other."""
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=9, patient_id="PAT-T")
    site.store(study)
    patient, study_id = with_patient(site, study, "MRN-T")
    assert site.client.get(f"/dicom-web/studies/{study.study_uid}/thumbnail",
                           headers={"X-Request-Id": "req-thumb"}).status_code == 200
    (event,) = events_of(engine_of(site), "req-thumb")
    assert code_of(event) == "read" and f"ImagingStudy/{study_id}" in whats(event)
    assert patient_of(event) == f"Patient/{patient}"
    series = study.series[0]
    sop = sorted(series.instances)[0]
    url = f"/dicom-web/studies/{study.study_uid}/series/{series.series_uid}/instances/{sop}/frames/1/rendered"
    assert site.client.get(url, headers={"X-Request-Id": "req-rendered"}).status_code == 200
    details = details_of(events_of(engine_of(site), "req-rendered")[0])
    assert details["SOPInstanceUID"] == sop and details["frames"] == "1"
