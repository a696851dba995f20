"""Many machines, one archive: two API nodes and two workers as separate processes with
separate var/ directories and no shared file system, sharing PostgreSQL, Redis and a
SeaweedFS bucket; and SeaweedFS killed in the middle of a transfer."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from fhirimg.blobs import tools
from fhirimg.blobs.s3 import S3Objects
from fhirimg.store import Repository, make_engine
from fhirimg.transfer.blobstore import BlobStore

from ..factories import make_endpoint, make_imaging_study
from ..services import database_url_of, free_port, start_fhirimg, wait_for_http
from ..transfer.conftest import orthanc  # noqa: F401 (the source archive, a fixture)
from ..transfer.dicomfactory import make_study
from ..transfer.workerproc import WorkerProcess, wait_for, write_config
from .test_backends import s3_settings

FHIR = {"Content-Type": "application/fhir+json"}
DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


class Node:
    """One machine: its own var/ and config file; an API server and/or a worker."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str, seaweed, bucket: str):
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.port = free_port()
        self.config = write_config(workdir / "fhirimg.toml", {
            "database_url": database_url, "redis_url": redis_url, "var_dir": str(workdir / "var"),
            "log_level": "INFO"}, {
            "auth": {"mode": "none", "allow_anonymous": True},
            "transfer": {"allow_loopback": True, "backoff_base": 0.05, "lease_seconds": 3.0,
                         "reconcile_interval": 0.5, "read_timeout": 20.0, "max_retries": 8},
            "blobs": {"backend": "s3"}, "blobs.s3": {
                "endpoint": seaweed.endpoint, "bucket": bucket, "region": seaweed.region,
                "access_key": seaweed.access_key, "secret_key": seaweed.secret_key, "max_retries": 10}})
        self.processes = []
        self.worker: WorkerProcess | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> "Node":
        process = start_fhirimg(["serve", "--config", str(self.config), "--port", str(self.port), "--workers", "1"],
                                self.workdir, env=clean_env())
        self.processes.append(process)
        wait_for_http(f"{self.base}/fhir/metadata", process, log=self.workdir / "fhirimg.log")
        return self

    def work(self) -> "Node":
        self.worker = WorkerProcess(self.config, self.workdir / "worker.log")
        return self

    def local_objects(self) -> list[Path]:
        return [p for p in (self.workdir / "var").rglob("*.dcm") if ".staging" not in p.parts]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(20)
        if self.worker is not None:
            self.worker.stop()


def clean_env() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}


@pytest.fixture
def shared(backend, database, redis_server, seaweed, bucket, tmp_path):
    if backend != "postgres":
        pytest.skip("several machines share PostgreSQL, not a SQLite file")
    nodes = []

    def node(name: str) -> Node:
        made = Node(tmp_path / name, database_url_of(database), redis_server.url, seaweed, bucket)
        nodes.append(made)
        return made

    yield node
    for made in nodes:
        made.stop()


def retrieve(api: Node, source: str, study_uid: str) -> str:
    endpoint = requests.post(f"{api.base}/fhir/Endpoint", json=make_endpoint(source), headers=FHIR, timeout=10).json()
    study = requests.post(f"{api.base}/fhir/ImagingStudy", headers=FHIR, timeout=10, json=make_imaging_study(
        study_uid=study_uid, endpoint=[{"reference": f"Endpoint/{endpoint['id']}"}])).json()
    started = requests.post(f"{api.base}/fhir/ImagingStudy/{study['id']}/$retrieve", timeout=10)
    assert started.status_code == 202, started.text
    return started.headers["Content-Location"].rsplit("/", 1)[1]


def final_task(api: Node, task_id: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (lambda t: t if t["status"] in ("completed", "failed", "cancelled") else None)(
        requests.get(f"{api.base}/fhir/Task/{task_id}", timeout=10).json()), timeout, what=f"Task/{task_id}")


def served(api: Node, study_uid: str) -> dict[str, bytes]:
    from dicomweb_client.api import DICOMwebClient
    client = DICOMwebClient(api.base + "/dicom-web")
    return {ds.SOPInstanceUID: ds for ds in client.retrieve_study(study_uid)}


def test_a_study_retrieved_by_one_machines_worker_is_served_by_another_machines_api(shared, orthanc):  # noqa: F811
    study = make_study(series=2, instances=4, rows=64, columns=64, seed=71)
    orthanc.upload_study(study)
    one, two = shared("machine-1").serve(), shared("machine-2").serve().work()
    task = final_task(one, retrieve(one, orthanc.dicomweb, study.study_uid))
    assert task["status"] == "completed", task.get("statusReason")
    raw = requests.get(f"{one.base}/dicom-web/studies/{study.study_uid}", headers=DICOM, timeout=30)
    assert raw.status_code == 200
    for data in study.instances.values():
        assert data in raw.content  # byte for byte, as the source had them
    assert set(served(two, study.study_uid)) == set(study.instances)
    assert one.local_objects() == [] and two.local_objects() == []  # nothing on either machine's disk


def test_seaweedfs_killed_during_a_transfer_and_restarted(shared, orthanc, seaweed, bucket, database):  # noqa: F811
    study = make_study(series=4, instances=250, rows=64, columns=64, seed=72)  # 1 000 x 8 KiB
    orthanc.upload_study(study)
    api = shared("machine-1").serve().work()
    task_id = retrieve(api, orthanc.dicomweb, study.study_uid)
    engine = make_engine(database_url_of(database))
    objects = S3Objects.from_settings(s3_settings(seaweed, bucket, max_retries=2)["s3"])
    objects.prefix = ""
    wait_for(lambda: sum(1 for _ in objects.keys()) >= 100 or None, 120, what="the transfer under way")
    seaweed.kill()
    time.sleep(2)
    seaweed.restart()
    task = final_task(api, task_id, timeout=180)
    assert task["status"] == "completed", task.get("statusReason")  # through the outage, on its own
    store = BlobStore(api.workdir / "fsck", engine, objects=objects)
    report = tools.fsck(store, Repository(engine))
    assert report.clean, report.problems
    assert tools.verify(store, study.study_uid).ok == 1000
