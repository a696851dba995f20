"""Retrieve Tasks over DIMSE against independent peers: dcmtk's dcmqrscp as a second PACS, dcmtk's
storescp refusing, and a scripted pynetdicom PACS that aborts or stalls a C-GET."""
from __future__ import annotations

import io
import shutil
import subprocess
import threading
import time

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind as STUDY_FIND,
                                  StudyRootQueryRetrieveInformationModelGet as STUDY_GET)

from fhirimg.transfer.taskoutput import output_value
from fhirimg.transfer.tasks import run_retrieve

from ..services import free_port, require_or_skip, wait_for_port
from ..transfer.dicomfactory import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, make_study
from ..transfer.site import make_site
from .test_source_orthanc import add_dimse_study, split_part10, stored_files


def dcmtk(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        require_or_skip(f"dcmtk's {binary} is not installed (apt-get install dcmtk)")
    return path


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


def rejections(task: dict) -> list[str]:
    return [o["valueString"] for o in task.get("output") or [] if o["type"]["coding"][0]["code"] == "rejected"]


def reason(task: dict) -> str:
    return task["statusReason"]["concept"]["text"]


# --- dcmtk's dcmqrscp: a second PACS, with a C-GET SCP of its own -----------------------------

@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory):
    """dcmqrscp (forking: its single-process mode crashed on the second association) serving
    a study indexed with dcmqridx. Its index has no SOP Class UID key, so C-FIND cannot say
    which storage classes the C-GET will bring."""
    binary, indexer = dcmtk("dcmqrscp"), dcmtk("dcmqridx")
    root = tmp_path_factory.mktemp("dcmqrscp")
    (root / "db").mkdir()
    study = make_study(series=2, instances=3, rows=64, columns=64, seed=173)
    paths = []
    for sop_uid, data in study.instances.items():
        paths.append(root / "db" / f"{sop_uid}.dcm")
        paths[-1].write_bytes(data)
    subprocess.run([indexer, str(root / "db"), *map(str, paths)], check=True, capture_output=True)
    port = free_port()
    (root / "qr.cfg").write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
                                 "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
                                 f"AETable BEGIN\nQRSCP {root / 'db'} RW (200, 1024mb) ANY\nAETable END\n")
    log = open(root / "dcmqrscp.log", "wb")
    process = subprocess.Popen([binary, "-c", str(root / "qr.cfg"), str(port)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port)
    yield port, study
    stop(process)
    log.close()


def test_a_study_from_dcmqrscp_arrives_whole_even_when_c_find_names_no_sop_class(tmp_path, dcmqrscp):
    port, study = dcmqrscp
    site = make_site(tmp_path)
    study_id = add_dimse_study(site, f"dicom://QRSCP@127.0.0.1:{port}", study.study_uid)
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "completed", site.task(task_id).get("statusReason")
    files = stored_files(site)
    assert {sop: split_part10(data)[1] for sop, data in files.items()} == \
        {sop: split_part10(data)[1] for sop, data in study.instances.items()}
    resource = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
    classes = {i["sopClass"]["code"] for s in resource["series"] for i in s["instance"]}
    assert classes == {f"urn:oid:{CT_IMAGE_STORAGE}", f"urn:oid:{MR_IMAGE_STORAGE}"}  # read from the files


# --- dcmtk's storescp: a node that is no PACS ---------------------------------------------------

@pytest.mark.parametrize("options, says", [
    (["--refuse"], "the DICOM source rejected the association (Rejected Permanent"),
    ([], "the DICOM source accepted none of the presentation contexts proposed"),
])
def test_a_node_that_refuses_fails_the_task_with_the_reason(tmp_path, options, says):
    port = free_port()
    process = subprocess.Popen([dcmtk("storescp"), *options, "-od", str(tmp_path), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        site = make_site(tmp_path)
        task_id = site.start_retrieve(add_dimse_study(site, f"dicom://STORESCP@127.0.0.1:{port}",
                                                      "1.2.826.0.1.3680043.8.498.173001"))
        started = time.monotonic()
        assert run_retrieve(task_id, site.context()) == "failed"
    finally:
        stop(process)
    assert reason(site.task(task_id)).startswith(says)
    assert time.monotonic() - started < 10


def test_a_closed_port_fails_the_task_as_unreachable(tmp_path):
    site = make_site(tmp_path)
    task_id = site.start_retrieve(add_dimse_study(site, f"dicom://PACS@127.0.0.1:{free_port()}",
                                                  "1.2.826.0.1.3680043.8.498.173002"))
    assert run_retrieve(task_id, site.context()) == "failed"
    assert reason(site.task(task_id)) == "the source could not be reached (no connection)"


# --- a scripted PACS (pynetdicom): C-FIND answers, C-GET misbehaves -----------------------------

class ScriptedPacs:
    """A Study Root FIND and GET SCP over a synthetic study; ``on_get(event)`` decides the C-GET."""

    def __init__(self, study, on_get):
        self.study = study
        self.datasets = {sop: pydicom.dcmread(io.BytesIO(data)) for sop, data in study.instances.items()}
        ae = AE(ae_title="SCRIPTED")
        ae.add_supported_context(STUDY_FIND)
        ae.add_supported_context(STUDY_GET)
        for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
            ae.add_supported_context(sop_class, scu_role=True, scp_role=True)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self.find), (evt.EVT_C_GET, on_get)])

    def find(self, event):
        level = event.identifier.QueryRetrieveLevel
        for ds in self.datasets.values():
            if level == "SERIES" and ds.InstanceNumber == 1:
                yield 0xFF00, self.answer(ds, "SERIES", ("SeriesInstanceUID", "Modality", "SeriesNumber"))
            elif level == "IMAGE" and ds.SeriesInstanceUID == event.identifier.SeriesInstanceUID:
                yield 0xFF00, self.answer(ds, "IMAGE", ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                                        "InstanceNumber", "Rows", "Columns", "BitsAllocated"))

    @staticmethod
    def answer(ds, level, keywords):
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = level, ds.StudyInstanceUID
        for keyword in keywords:
            setattr(identifier, keyword, ds[keyword].value)
        return identifier

    def series_datasets(self, event):
        return [ds for ds in self.datasets.values() if ds.SeriesInstanceUID == event.identifier.SeriesInstanceUID]

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def scripted_study():
    return make_study(series=2, instances=2, rows=16, columns=16, seed=174)


def test_a_source_that_aborts_the_c_get_fails_the_task_with_the_reason(tmp_path, scripted_study):
    def abort(event):
        yield 2
        event.assoc.abort()

    pacs = ScriptedPacs(scripted_study, abort)
    try:
        site = make_site(tmp_path)
        task_id = site.start_retrieve(add_dimse_study(site, f"dicom://SCRIPTED@127.0.0.1:{pacs.port}",
                                                      scripted_study.study_uid))
        assert run_retrieve(task_id, site.context()) == "failed"
    finally:
        pacs.stop()
    task = site.task(task_id)
    assert reason(task) == "4 of 4 instances could not be retrieved"
    assert len(rejections(task)) == 4, rejections(task)
    assert all(r.startswith("not-retrieved: the DICOM source aborted the association during C-GET")
               for r in rejections(task)), rejections(task)
    assert stored_files(site) == {}


def stalling_pacs(study, released: threading.Event) -> ScriptedPacs:
    """Sends the first instance of a series, then sends nothing until released."""
    pacs = None

    def stall(event):
        datasets = pacs.series_datasets(event)
        yield len(datasets)
        yield 0xFF00, datasets[0]
        released.wait(30)
        for ds in datasets[1:]:
            yield 0xFF00, ds

    pacs = ScriptedPacs(study, stall)
    return pacs


def test_a_cancel_ends_a_stalled_c_get_at_once(tmp_path, scripted_study):
    released = threading.Event()
    pacs = stalling_pacs(scripted_study, released)
    try:
        site = make_site(tmp_path)
        task_id = site.start_retrieve(add_dimse_study(site, f"dicom://SCRIPTED@127.0.0.1:{pacs.port}",
                                                      scripted_study.study_uid))

        def cancel_when_stalled():
            deadline = time.monotonic() + 20
            while len(stored_files(site)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            task = site.task(task_id)
            site.client.put(f"/fhir/Task/{task_id}", json={**task, "status": "cancelled"})

        canceller = threading.Thread(target=cancel_when_stalled)
        canceller.start()
        started = time.monotonic()
        status = run_retrieve(task_id, site.context())
        elapsed = time.monotonic() - started
        canceller.join()
    finally:
        released.set()
        pacs.stop()
    assert status == "cancelled" and elapsed < 10  # the DIMSE timeout is 30 s: the watchdog aborted
    assert len(stored_files(site)) == 2  # what arrived before the cancel stays (a new Task resumes)


def test_a_stalled_c_get_fails_at_the_task_deadline(tmp_path, scripted_study):
    released = threading.Event()
    pacs = stalling_pacs(scripted_study, released)
    try:
        site = make_site(tmp_path, task_deadline=1.5)
        task_id = site.start_retrieve(add_dimse_study(site, f"dicom://SCRIPTED@127.0.0.1:{pacs.port}",
                                                      scripted_study.study_uid))
        started = time.monotonic()
        assert run_retrieve(task_id, site.context()) == "failed"
        elapsed = time.monotonic() - started
    finally:
        released.set()
        pacs.stop()
    assert reason(site.task(task_id)) == ("the transfer took longer than the configured deadline "
                                          "(transfer.task_deadline)")
    assert elapsed < 6
    assert output_value(site.task(task_id), "instances-stored") is None  # no report: abandoned as a whole
