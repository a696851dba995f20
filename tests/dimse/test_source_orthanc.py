"""Retrieve Tasks from an Endpoint of connection type dicom-dimse, against Orthanc's DICOM server.

The Task runs through ``run_retrieve`` like a DICOMweb one; expectations are computed from
Orthanc's own answers (its stored files, dcmtk's findscu), never from the code under test.
"""
from __future__ import annotations

import io
import socket
import struct
import subprocess
import threading

import pydicom
import pytest

from fhirimg.transfer.sources import DIMSE_SYSTEM
from fhirimg.transfer.taskoutput import output_value
from fhirimg.transfer.tasks import run_retrieve

from ..factories import make_endpoint, make_imaging_study
from ..services import database_url_of, free_port
from ..transfer.dicomfactory import make_dataset, make_study, to_part10
from ..transfer.site import make_site
from .orthanc_dimse import OrthancDicomServer


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = OrthancDicomServer(tmp_path_factory.mktemp("orthanc-dimse"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source_study(orthanc):
    study = make_study(series=2, instances=4, rows=64, columns=64, seed=171)
    orthanc.upload_study(study)
    return study


def dimse_address(orthanc, ae_title: str = "ORTHANC") -> str:
    return f"dicom://{ae_title}@127.0.0.1:{orthanc.dicom_port}"


def add_dimse_study(site, address: str, study_uid: str, **study) -> str:
    """A dicom-dimse Endpoint and an ImagingStudy naming the study UID; returns its id."""
    body = make_endpoint(address)
    body["connectionType"] = [{"coding": [{"system": DIMSE_SYSTEM, "code": "dicom-dimse"}]}]
    endpoint = site.client.post("/fhir/Endpoint", json=body).json["id"]
    response = site.client.post("/fhir/ImagingStudy", json=make_imaging_study(
        study_uid=study_uid, endpoint=[{"reference": f"Endpoint/{endpoint}"}], **study))
    assert response.status_code == 201, response.json
    return response.json["id"]


def retrieve(site, study_id: str) -> dict:
    task_id = site.start_retrieve(study_id)
    run_retrieve(task_id, site.context())
    return site.task(task_id)


def orthanc_file(orthanc, sop_uid: str) -> bytes:
    """The file Orthanc holds for an instance (its REST API, not DIMSE)."""
    found = orthanc.session.post(f"{orthanc.url}/tools/lookup", data=sop_uid, timeout=10).json()
    instance_id = next(item["ID"] for item in found if item["Type"] == "Instance")
    return orthanc.session.get(f"{orthanc.url}/instances/{instance_id}/file", timeout=10).content


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(file meta group, data set) of a Part-10 file (PS3.10 7.1: the group length comes first)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    end = 144 + struct.unpack("<I", data[140:144])[0]
    return data[132:end], data[end:]


def stored_files(site) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in site.context().blobstore.root.rglob("*.dcm")}


def staging_files(site) -> list:
    return list((site.context().blobstore.root / ".staging").glob("*"))


def test_task_over_c_get_completes_with_step_timings_and_the_source_data_sets(tmp_path, database, orthanc,
                                                                              source_study):
    site = make_site(tmp_path, database_url=database_url_of(database))
    study_id = add_dimse_study(site, dimse_address(orthanc), source_study.study_uid)
    task = retrieve(site, study_id)
    assert task["status"] == "completed", task.get("statusReason")
    assert output_value(task, "series-expected") == 2
    assert output_value(task, "instances-expected") == 8 and output_value(task, "instances-stored") == 8
    assert output_value(task, "series-requests") == 2 and output_value(task, "instance-requests") == 0
    for step in ("qido", "metadata", "retrieve", "total"):
        assert output_value(task, f"duration-{step}") > 0
    assert output_value(task, "time-to-first-instance") > 0
    files = stored_files(site)
    assert set(files) == set(source_study.instances)
    for sop_uid, ours in files.items():
        theirs = orthanc_file(orthanc, sop_uid)
        assert split_part10(ours)[1] == split_part10(theirs)[1]  # the data set, byte for byte
        # The file meta is ours: same SOP and transfer syntax, our implementation and the sender.
        meta, their_meta = pydicom.dcmread(io.BytesIO(ours)).file_meta, pydicom.dcmread(io.BytesIO(theirs)).file_meta
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
            assert meta[keyword].value == their_meta[keyword].value
        assert meta.SourceApplicationEntityTitle == "ORTHANC"
    assert int(output_value(task, "bytes-retrieved")) == sum(len(b) for b in files.values())
    assert staging_files(site) == []


def test_completed_study_lists_the_source_series_and_is_served_by_our_dicomweb(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    study_id = add_dimse_study(site, dimse_address(orthanc), source_study.study_uid, series=1, instances=1)
    assert retrieve(site, study_id)["status"] == "completed"
    study = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
    assert {s["uid"] for s in study["series"]} == {s.series_uid for s in source_study.series}
    assert {s["modality"]["coding"][0]["code"] for s in study["series"]} == {"CT", "MR"}
    assert study["numberOfInstances"] == 8
    endpoint = site.client.get("/fhir/" + study["endpoint"][-1]["reference"]).json
    assert endpoint["address"] == "http://fhirimg.test/dicom-web"
    served = site.served_study(source_study.study_uid)
    assert {sop: split_part10(data)[1] for sop, data in served.items()} == \
        {sop: split_part10(data)[1] for sop, data in source_study.instances.items()}


def findscu_instances(orthanc, study_uid: str, series_uid: str, workdir) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID as dcmtk's findscu gets them from the same Orthanc."""
    subprocess.run(["findscu", "-S", "-aet", "DCMTK", "-aec", "ORTHANC", "-X", "-od", str(workdir),
                    "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study_uid}",
                    "-k", f"SeriesInstanceUID={series_uid}", "-k", "SOPInstanceUID", "-k", "SOPClassUID",
                    "127.0.0.1", str(orthanc.dicom_port)], check=True, capture_output=True, timeout=30)
    answers = [pydicom.dcmread(path) for path in sorted(workdir.glob("rsp*.dcm"))]
    return {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in answers}


def test_what_c_find_listed_is_what_dcmtk_findscu_lists(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), source_study.study_uid))
    assert task["status"] == "completed"
    study = site.client.get(f"/fhir/ImagingStudy/{task['focus']['reference'].split('/')[1]}").json
    ours = {i["uid"]: i["sopClass"]["code"].removeprefix("urn:oid:") for s in study["series"] for i in s["instance"]}
    theirs = {}
    for n, series in enumerate(source_study.series):
        (tmp_path / f"find{n}").mkdir()
        theirs |= findscu_instances(orthanc, source_study.study_uid, series.series_uid, tmp_path / f"find{n}")
    assert ours == theirs and len(theirs) == 8


def test_resumed_task_asks_only_for_the_missing_instances(tmp_path, orthanc, source_study):
    site = make_site(tmp_path)
    held = make_study(series=0)
    held.study_uid = source_study.study_uid
    first = source_study.series[0]
    held.series = [type(first)(first.series_uid, first.modality, dict(list(first.instances.items())[:3]))]
    site.store(held)  # 3 of 8 already stored, as a Task that stopped would leave them
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), source_study.study_uid))
    assert task["status"] == "completed"
    assert output_value(task, "instances-skipped") == 3 and output_value(task, "instances-retrieved") == 5
    # The other series whole; of the first only the missing one, by an IMAGE-level UID list.
    assert output_value(task, "series-requests") == 1 and output_value(task, "instance-requests") == 1
    assert set(stored_files(site)) == set(source_study.instances)


class CountingListener:
    """A TCP port that counts the connections made to it (an association needs one)."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


def test_host_outside_the_allow_list_gets_no_association(tmp_path, source_study):
    listener = CountingListener()
    try:
        site = make_site(tmp_path, allow_loopback=False, allowed_hosts=["pacs.example.org"])
        study_id = add_dimse_study(site, f"dicom://PACS@127.0.0.1:{listener.port}", source_study.study_uid)
        task = retrieve(site, study_id)
    finally:
        listener.stop()
    assert task["status"] == "failed"
    assert "127.0.0.1 refused by the transfer allow-list" in task["statusReason"]["concept"]["text"]
    assert listener.connections == 0
    assert site.client.get(f"/fhir/ImagingStudy/{study_id}").json["meta"]["versionId"] == "1"


def test_a_listed_loopback_port_is_allowed_without_allow_loopback(tmp_path, orthanc, source_study):
    site = make_site(tmp_path, allow_loopback=False, allowed_hosts=[f"127.0.0.1:{orthanc.dicom_port}"])
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), source_study.study_uid))
    assert task["status"] == "completed", task.get("statusReason")


def test_an_instance_over_max_instance_bytes_is_refused_and_the_others_stored(tmp_path, orthanc):
    import numpy as np
    study = make_study(series=1, instances=3, rows=32, columns=32, seed=172)
    series = study.series[0]
    big = make_dataset(study.study_uid, series.series_uid, "1.2.826.0.1.3680043.8.498.172999", "CT", 1, 4,
                       256, 256, np.random.default_rng(5))
    series.instances[big.SOPInstanceUID] = to_part10(big)  # 128 KiB of pixel data; the others 2 KiB
    orthanc.upload_study(study)
    site = make_site(tmp_path, max_instance_bytes=64 * 1024)
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), study.study_uid))
    assert task["status"] == "failed"
    assert task["statusReason"]["concept"]["text"] == "1 of 4 instances could not be retrieved"
    assert output_value(task, "instances-rejected") == 1
    rejected = [o["valueString"] for o in task["output"] if o["type"]["coding"][0]["code"] == "rejected"]
    assert len(rejected) == 1 and rejected[0].startswith("too-large:") and big.SOPInstanceUID in rejected[0]
    assert set(stored_files(site)) == set(series.instances) - {big.SOPInstanceUID}
    assert staging_files(site) == []


def test_unknown_study_at_the_source_fails_with_a_reason(tmp_path, orthanc):
    site = make_site(tmp_path)
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), "1.2.826.0.1.3680043.8.498.171999"))
    assert task["status"] == "failed"
    assert "no instances" in task["statusReason"]["concept"]["text"]


def test_a_task_past_its_byte_budget_is_abandoned_as_a_whole(tmp_path, orthanc, source_study):
    from fhirimg.transfer.guard import OverBudget
    site = make_site(tmp_path, max_task_bytes=16 * 1024)  # two of the 8 KiB instances
    task = retrieve(site, add_dimse_study(site, dimse_address(orthanc), source_study.study_uid))
    assert task["status"] == "failed" and task["statusReason"]["concept"]["text"] == OverBudget.reason
    assert len(stored_files(site)) < 8 and staging_files(site) == []
