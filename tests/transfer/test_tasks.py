"""The retrieve Task run as a plain function against a real Orthanc: lifecycle, outputs, study update."""
from __future__ import annotations

import pytest

from fhirimg.transfer.taskoutput import output_value
from fhirimg.transfer.tasks import run_retrieve

from .dicomfactory import make_study
from .faultproxy import Fault
from .site import make_site


@pytest.fixture(scope="module")
def source_study(orthanc):
    study = make_study(series=2, instances=4, rows=64, columns=64, seed=21)
    orthanc.upload_study(study)
    return study


def test_retrieve_task_completes_and_records_where_the_time_went(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb + f"/studies/{source_study.study_uid}", source_study.study_uid)
    task_id = site.start_retrieve(study_id, "stat")
    assert run_retrieve(task_id, site.context()) == "completed"
    task = site.task(task_id)
    assert task["status"] == "completed" and task["priority"] == "stat"
    assert task["businessStatus"]["coding"][0]["code"] == "done"
    assert output_value(task, "series-expected") == 2
    assert output_value(task, "instances-expected") == 8 and output_value(task, "instances-stored") == 8
    assert int(output_value(task, "bytes-retrieved")) == sum(len(b) for b in source_study.instances.values())
    for step in ("qido", "metadata", "retrieve"):
        assert output_value(task, f"duration-{step}") >= 0
    assert "start" in task["executionPeriod"] and "end" in task["executionPeriod"]


def test_completed_study_lists_the_source_series_and_our_endpoint(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb, source_study.study_uid, series=1, instances=1)
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "completed", site.task(task_id)
    study = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
    assert int(study["meta"]["versionId"]) >= 2  # groups of stored instances, then the reconciled study
    assert {s["uid"] for s in study["series"]} == {s.series_uid for s in source_study.series}
    expected = {sop for s in source_study.series for sop in s.instances}
    assert {i["uid"] for s in study["series"] for i in s["instance"]} == expected
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 8
    assert {s["modality"]["coding"][0]["code"] for s in study["series"]} == {"CT", "MR"}
    endpoint = site.client.get("/fhir/" + study["endpoint"][-1]["reference"]).json
    assert endpoint["address"] == "http://fhirimg.test/dicom-web"
    assert site.served_study(source_study.study_uid) == source_study.instances


def test_second_retrieve_while_active_returns_the_same_task(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb, source_study.study_uid)
    first = site.start_retrieve(study_id)
    assert site.start_retrieve(study_id, "urgent") == first
    run_retrieve(first, site.context())
    assert site.start_retrieve(study_id) != first  # finished: a new request is a new Task


def test_host_outside_the_allow_list_fails_the_task_without_a_request(tmp_path, fault_proxy, source_study):
    site = make_site(tmp_path, allow_loopback=False, allowed_hosts=["pacs.example.org"])
    study_id = site.add_study(fault_proxy.dicomweb, source_study.study_uid)
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "failed"
    task = site.task(task_id)
    assert "allow-list" in task["statusReason"]["concept"]["text"]
    assert fault_proxy.log == []
    assert site.client.get(f"/fhir/ImagingStudy/{study_id}").json["meta"]["versionId"] == "1"


def test_cancelled_task_is_not_run(tmp_path, fault_proxy, source_study):
    site = make_site(tmp_path)
    study_id = site.add_study(fault_proxy.dicomweb, source_study.study_uid)
    task_id = site.start_retrieve(study_id)
    task = site.task(task_id)
    response = site.client.put(f"/fhir/Task/{task_id}", json={**task, "status": "cancelled"})
    assert response.status_code == 200
    assert run_retrieve(task_id, site.context()) == "cancelled"
    assert fault_proxy.log == []
    assert site.start_retrieve(study_id) != task_id


def test_throttled_source_still_completes_and_counts_retries(tmp_path, fault_proxy, orthanc, source_study):
    site = make_site(tmp_path)
    fault_proxy.add(Fault("status", r"/series\?", times=1, status=429, retry_after="0"))
    fault_proxy.add(Fault("status", r"/series/[0-9.]+$", times=1, status=503, retry_after="0"))
    study_id = site.add_study(fault_proxy.dicomweb, source_study.study_uid)
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "completed"
    assert output_value(site.task(task_id), "retries") == 2
    assert site.served_study(source_study.study_uid) == source_study.instances


def test_missing_study_at_the_source_fails_with_a_reason(tmp_path, orthanc):
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb, "1.2.826.0.1.3680043.8.498.999999")
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "failed"
    assert "no instances" in site.task(task_id)["statusReason"]["concept"]["text"]


def test_transfer_report_shows_where_the_time_went(tmp_path, orthanc, source_study, monkeypatch):
    from click.testing import CliRunner

    from fhirimg.cli import main
    from fhirimg.transfer.report import format_task_report
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb, source_study.study_uid)
    task_id = site.start_retrieve(study_id)
    run_retrieve(task_id, site.context())
    text = format_task_report(site.task(task_id))
    for label in ("1 QIDO-RS", "2 series metadata", "3 pixel data", "total", "slowest", "8/8 stored"):
        assert label in text
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", site.config["database_url"])
    result = CliRunner().invoke(main, ["transfer-report", task_id])
    assert result.exit_code == 0 and text.splitlines()[0] in result.output
    assert CliRunner().invoke(main, ["transfer-report", "nope"]).exit_code != 0


def test_task_cancelled_by_json_patch_is_not_run(tmp_path, fault_proxy, source_study):
    site = make_site(tmp_path)
    task_id = site.start_retrieve(site.add_study(fault_proxy.dicomweb, source_study.study_uid))
    response = site.client.patch(f"/fhir/Task/{task_id}", data='[{"op": "replace", "path": "/status", '
                                 '"value": "cancelled"}]', headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 200
    assert run_retrieve(task_id, site.context()) == "cancelled"
    assert fault_proxy.log == [] and site.task(task_id)["status"] == "cancelled"


def test_a_task_whose_runs_keep_dying_is_failed_after_max_runs(tmp_path, fault_proxy, source_study):
    from sqlalchemy import update

    from fhirimg.transfer.schema import active_retrieve
    site = make_site(tmp_path, max_runs=2)
    task_id = site.start_retrieve(site.add_study(fault_proxy.dicomweb, source_study.study_uid))
    with site.app.extensions["fhirimg.engine"].begin() as conn:  # two earlier runs died
        conn.execute(update(active_retrieve).where(active_retrieve.c.task_id == task_id).values(runs=2))
    assert run_retrieve(task_id, site.context()) == "failed"
    assert "gave up after 2 runs" in site.task(task_id)["statusReason"]["concept"]["text"]
    assert fault_proxy.log == []
