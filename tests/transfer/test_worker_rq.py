"""Retrieve Tasks carried out by real ``fhirimg worker`` processes on a private Redis.

The Task is the truth and the RQ job only transport: these tests kill the worker, lose
Redis' data and cancel mid-transfer, and check that every study ends complete (or
cancelled) with nothing half-written in the blob store.
"""
from __future__ import annotations

import hashlib
import time

import pytest
from dicomweb_client.api import DICOMwebClient
from redis import Redis
from rq.job import Job
from sqlalchemy import select

from fhirimg.app import create_app
from fhirimg.transfer.blobstore import STAGING_DIR
from fhirimg.transfer.jobs import job_id_for
from fhirimg.transfer.schema import active_retrieve, dicom_instance
from fhirimg.transfer.taskoutput import output_value

from .dicomfactory import make_study
from .faultproxy import Fault
from .site import LiveServer, Site
from .test_rules import site_task_ids
from .workerproc import WorkerProcess, site_files, wait_for

FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def small_study(orthanc):
    study = make_study(series=2, instances=3, rows=64, columns=64, seed=31)
    orthanc.upload_study(study)
    return study


@pytest.fixture(scope="module")
def slow_study(orthanc):
    """Big enough to be caught mid-transfer behind a slow proxy: 3 series x 6 x 128 KiB."""
    study = make_study(series=3, instances=6, rows=256, columns=256, seed=32)
    orthanc.upload_study(study)
    return study


@pytest.fixture
def make_env(tmp_path, redis_server):
    """(site, start_worker, redis_server) for a config with these [transfer] overrides."""
    workers: list[WorkerProcess] = []

    def build(database_url: str | None = None, **transfer):
        config_path, config = site_files(tmp_path, redis_server.url, database_url, **transfer)
        site = Site(config, create_app(config))

        def start_worker() -> WorkerProcess:
            worker = WorkerProcess(config_path, tmp_path / "worker.log")
            workers.append(worker)
            return worker

        return site, start_worker, redis_server

    yield build
    for worker in workers:
        worker.stop()


@pytest.fixture
def site_env(make_env):
    return make_env()


def final_task(site: Site, task_id: str, timeout: float = 60.0) -> dict:
    return wait_for(lambda: (lambda t: t if t["status"] in FINAL else None)(site.task(task_id)),
                    timeout, what=f"Task/{task_id} finished")


def blob_files(site: Site) -> dict[str, bytes]:
    root = site.context().blobstore.root
    return {p.stem: p.read_bytes() for p in root.rglob("*.dcm") if STAGING_DIR not in p.parts}


def active_rows(site: Site) -> list:
    with site.app.extensions["fhirimg.engine"].connect() as conn:
        return conn.execute(select(active_retrieve)).all()


def index_rows(site: Site) -> list:
    with site.app.extensions["fhirimg.engine"].connect() as conn:
        return conn.execute(select(dicom_instance)).all()


def test_retrieve_through_the_worker_serves_the_study_back_over_dicomweb(site_env, orthanc, small_study):
    site, start_worker, redis_server = site_env
    study_id = site.add_study(orthanc.dicomweb, small_study.study_uid)
    task_id = site.start_retrieve(study_id, "stat")
    job = Job.fetch(job_id_for(task_id), connection=Redis.from_url(redis_server.url))
    assert job.origin == "fhirimg-urgent"  # an emergency never waits behind a routine backfill
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "completed", task.get("statusReason")
    assert output_value(task, "instances-stored") == 6
    assert site.served_study(small_study.study_uid) == small_study.instances
    server = LiveServer(site.app)
    try:
        # The same bearer token as for the FHIR API (SMART Imaging: requires-access-token).
        client = DICOMwebClient(server.url + "/dicom-web",
                                headers={"Authorization": site.client.environ_base["HTTP_AUTHORIZATION"]})
        series = client.search_for_series(small_study.study_uid)
        assert {s["0020000E"]["Value"][0] for s in series} == {s.series_uid for s in small_study.series}
        for s in small_study.series:
            for dataset in client.retrieve_series(small_study.study_uid, s.series_uid):
                uploaded = s.instances[dataset.SOPInstanceUID]
                assert dataset.PixelData == __import__("pydicom").dcmread(
                    __import__("io").BytesIO(uploaded)).PixelData
    finally:
        server.stop()


def test_throttled_and_breaking_source_completes_through_the_worker(site_env, fault_proxy, orthanc, small_study):
    site, start_worker, _ = site_env
    fault_proxy.add(Fault("status", r"/instances\?", times=2, status=429, retry_after="0"))
    fault_proxy.add(Fault("status", r"/series/[0-9.]+$", times=1, status=503, retry_after="1"))
    first, second = (s.series_uid for s in small_study.series)
    fault_proxy.add(Fault("drop", rf"/series/{first}$", times=1, after_bytes=12_000))  # reset mid-part
    fault_proxy.add(Fault("truncate", rf"/series/{second}$", times=1, after_bytes=20_000))
    fault_proxy.add(Fault("truncate", r"/instances/[0-9.]+$", times=1, after_bytes=700))
    study_id = site.add_study(fault_proxy.dicomweb, small_study.study_uid)
    task_id = site.start_retrieve(study_id)
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "completed" and output_value(task, "retries") == 3
    assert output_value(task, "series-fallbacks") == 2
    assert blob_files(site) == small_study.instances
    assert not list(site.context().blobstore.staging.iterdir())


def test_endpoint_outside_the_allow_list_fails_the_task_with_a_reason(site_env, small_study):
    site, start_worker, _ = site_env
    study_id = site.add_study("https://pacs.example.org/dicom-web", small_study.study_uid)
    task_id = site.start_retrieve(study_id)
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "failed"
    assert "pacs.example.org" in task["statusReason"]["concept"]["text"]
    assert "allow-list" in task["statusReason"]["concept"]["text"]


def test_worker_killed_mid_transfer_then_restarted_completes_without_partial_files(
        site_env, fault_proxy, orthanc, slow_study):
    site, start_worker, _ = site_env
    fault_proxy.add(Fault("slow", r"/series/[0-9.]+$", times=100, delay=0.05))
    study_id = site.add_study(fault_proxy.dicomweb, slow_study.study_uid)
    task_id = site.start_retrieve(study_id)
    worker = start_worker()
    # The first instance is committed at once, the next ones in groups of 16 (group commit):
    # waiting for a second row could mean waiting for the whole study.
    wait_for(lambda: len(index_rows(site)) >= 1, 60, what="first instance stored")
    worker.kill()
    stored_before = len(index_rows(site))
    assert stored_before < 18 and site.task(task_id)["status"] == "in-progress"
    fault_proxy.clear()
    start_worker()  # its reconciler finds the Task's heartbeat stale and re-enqueues it
    task = final_task(site, task_id)
    assert task["status"] == "completed"
    assert output_value(task, "instances-skipped") >= stored_before  # resumed, not restarted
    files = blob_files(site)
    assert files == slow_study.instances  # no partial file, none missing, none twice
    rows = index_rows(site)
    assert len(rows) == 18
    assert all(hashlib.sha256(files[r.sop_uid]).hexdigest() == r.sha256 for r in rows)
    staging = site.context().blobstore.staging
    wait_for(lambda: not list(staging.iterdir()), 10, what="staging swept")


def test_redis_losing_its_data_is_repaired_by_the_reconciler(site_env, orthanc, small_study):
    site, start_worker, redis_server = site_env
    study_id = site.add_study(orthanc.dicomweb, small_study.study_uid)
    task_id = site.start_retrieve(study_id)
    Redis.from_url(redis_server.url).flushall()  # the job is gone; the Task is not
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "completed"
    assert blob_files(site) == small_study.instances


def test_cancel_mid_transfer_stops_the_worker_at_the_next_instance(site_env, fault_proxy, slow_study):
    site, start_worker, _ = site_env
    fault_proxy.add(Fault("slow", r"/series/[0-9.]+$", times=100, delay=0.05))
    study_id = site.add_study(fault_proxy.dicomweb, slow_study.study_uid)
    task_id = site.start_retrieve(study_id)
    start_worker()
    wait_for(lambda: len(index_rows(site)) >= 1, 60, what="first instance stored")
    task = site.task(task_id)
    response = site.client.put(f"/fhir/Task/{task_id}", json={**task, "status": "cancelled"},
                               headers={"If-Match": f'W/"{task["meta"]["versionId"]}"'})
    if response.status_code == 412:  # the worker wrote a new version in between: try again
        task = site.task(task_id)
        response = site.client.put(f"/fhir/Task/{task_id}", json={**task, "status": "cancelled"})
    assert response.status_code == 200
    wait_for(lambda: not active_rows(site), 30, what="worker let go")
    assert site.task(task_id)["status"] == "cancelled"
    assert len(index_rows(site)) < 18
    assert not list(site.context().blobstore.staging.iterdir())
    imaging = site.client.get(f"/fhir/ImagingStudy/{study_id}").json  # followed what was stored, no more
    listed = {i["uid"] for s in imaging.get("series", []) for i in s.get("instance", [])}
    assert {row.sop_uid for row in index_rows(site)} <= listed
    assert not any(e["reference"] == "Endpoint/fhirimg-dicomweb" for e in imaging.get("endpoint", []))


def test_auto_retrieve_rule_fetches_a_pushed_study_without_a_request(make_env, orthanc, small_study):
    site, start_worker, _ = make_env(rules=[{"address_prefix": orthanc.dicomweb, "modalities": ["MR"],
                                             "priority": "urgent"}])
    study_id = site.add_study(orthanc.dicomweb, small_study.study_uid, modality="MR")
    start_worker()
    task_id = wait_for(lambda: next(iter(site_task_ids(site)), None), 90, what="a Task from the rule")
    task = final_task(site, task_id)
    assert task["status"] == "completed" and task["priority"] == "urgent"
    assert task["focus"]["reference"] == f"ImagingStudy/{study_id}"
    assert site.served_study(small_study.study_uid) == small_study.instances
    time.sleep(1.0)  # a few reconciler rounds: our own ImagingStudy update must not start another Task
    assert len(site_task_ids(site)) == 1


def test_redis_flushed_and_worker_lost_mid_transfer_the_task_still_completes(
        site_env, fault_proxy, slow_study):
    site, start_worker, redis_server = site_env
    fault_proxy.add(Fault("slow", r"/series/[0-9.]+$", times=100, delay=0.05))
    study_id = site.add_study(fault_proxy.dicomweb, slow_study.study_uid)
    task_id = site.start_retrieve(study_id)
    worker = start_worker()
    wait_for(lambda: len(index_rows(site)) >= 1, 60, what="first instance stored")
    Redis.from_url(redis_server.url).flushall()  # queue, job and worker registrations gone
    worker.kill()
    fault_proxy.clear()
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "completed"
    assert blob_files(site) == slow_study.instances


def test_worker_on_both_databases_completes_and_serves_the_study(make_env, database, orthanc, small_study):
    url, schema = database
    if schema:  # PostgreSQL: the test's private schema, named in the URL so the worker process uses it too
        url += f"?options=-csearch_path%3D{schema}"
    site, start_worker, _ = make_env(database_url=url)
    task_id = site.start_retrieve(site.add_study(orthanc.dicomweb, small_study.study_uid))
    start_worker()
    task = final_task(site, task_id)
    assert task["status"] == "completed", task.get("statusReason")
    assert site.served_study(small_study.study_uid) == small_study.instances
    assert not active_rows(site)
