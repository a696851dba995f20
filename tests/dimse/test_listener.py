"""The DICOM listener against real peers on loopback: dcmtk's storescu and echoscu, Orthanc's
C-STORE SCU, and pynetdicom as a misbehaving SCU; on SQLite and PostgreSQL.

What is stored is compared with what was sent byte for byte (the data set; the file meta is
the listener's, PS3.10 §7.1), the ImagingStudy is read back through the Repository, and every
refused request leaves nothing behind: no staging or inbox file, no index row, no ImagingStudy.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import select, text

from fhirimg.config import load_config
from fhirimg.dimse.inbox import INBOX_DIR
from fhirimg.dimse.listener import Listener
from fhirimg.store import Repository
from fhirimg.transfer.blobstore import STAGING_DIR
from fhirimg.transfer.schema import dicom_instance

from ..services import require_or_skip
from ..transfer.dicomfactory import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    UID_ROOT,
    make_study,
    to_part10,
)

AE_TITLE = "FHIRIMG"
SCU = "TESTSCU"
CALLERS = ("STORESCU", "ECHOSCU", SCU, "ORTHANC")  # dcmtk's default calling AE titles, ours, Orthanc's
MODALITY_WORKLIST = "1.2.840.10008.5.1.4.31"  # a query model, not a storage SOP class
SUCCESS, DUPLICATE, NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0111, 0x0122, 0xA700, 0xC000


@pytest.fixture
def make_listener(database, engine, tmp_path):
    started: list[Listener] = []

    def make(dicom: dict | None = None, push: dict | None = None) -> Listener:
        callers = [{"ae_title": caller, "hosts": ["127.0.0.1"]} for caller in CALLERS]
        config = load_config(env={}, read_files=False, overrides={
            "database_url": database[0], "var_dir": str(tmp_path / "var"),
            "dicom": {"callers": callers, **(dicom or {})}, "push": push or {}})
        listener = Listener(config, engine=engine)
        listener.address = listener.start("127.0.0.1", 0)
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop(grace=2.0)


@pytest.fixture
def listener(make_listener):
    return make_listener()


def require_dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        require_or_skip("dcmtk (storescu, echoscu) is not installed (apt-get install dcmtk)")


# -- what the listener holds ----------------------------------------------------------------------
def settled(listener: Listener) -> None:
    assert listener.inbox.drain(30.0), "acknowledged instances were not stored in time"


def stored_rows(listener: Listener) -> list:
    with listener.ingest.repo.engine.connect() as conn:
        return conn.execute(select(dicom_instance)).all()


def stored_files(listener: Listener) -> dict[str, bytes]:
    root = listener.ingest.blobstore.root
    return {row.sop_uid: (root / row.path).read_bytes() for row in stored_rows(listener)}


def leftovers(listener: Listener) -> list[Path]:
    """Files a refused or broken request might have left: staging and inbox."""
    root = listener.ingest.blobstore.root
    return sorted(p for d in (STAGING_DIR, INBOX_DIR) for p in (root / d).glob("*") if p.is_file())


def imaging_study(listener: Listener, study_uid: str) -> dict | None:
    repo = Repository(listener.ingest.repo.engine)
    with repo.reading() as uow:
        found = uow.search_ids("ImagingStudy", [("identifier", f"urn:dicom:uid|urn:oid:{study_uid}")])
        assert len(found) <= 1
        return uow.read("ImagingStudy", found[0]).resource if found else None


def study_versions(listener: Listener) -> int:
    with listener.ingest.repo.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM resource_version WHERE res_type = 'ImagingStudy'")).scalar()


def audit_events(listener: Listener) -> list[dict]:
    with listener.ingest.repo.engine.connect() as conn:
        return [json.loads(row[0]) for row in conn.execute(text("SELECT event FROM audit_event ORDER BY seq"))]


def detail(event: dict, name: str) -> str | None:
    return next((d["valueString"] for entity in event["entity"] for d in entity.get("detail", [])
                 if d["type"]["text"] == name), None)


def failures(listener: Listener) -> list[dict]:
    return [e for e in audit_events(listener) if e["outcome"]["code"]["code"] != "0"]


def assert_nothing_stored(listener: Listener) -> None:
    settled(listener)
    assert stored_rows(listener) == []
    assert study_versions(listener) == 0
    assert leftovers(listener) == []


def dataset_of(part10: bytes) -> bytes:
    """The data set of a Part-10 file: what follows the file meta group (PS3.10 §7.1)."""
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return part10[144 + group_length:]


def write_files(directory: Path, instances: dict[str, bytes]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, data in enumerate(instances.values()):
        path = directory / f"{number:04d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def wait_until(condition, timeout: float = 10.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message or "condition not reached in time"
        time.sleep(0.02)


# -- pynetdicom as the SCU ------------------------------------------------------------------------
def associate(listener: Listener, ae_title: str = SCU, called: str = AE_TITLE, bind: tuple | None = None):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    host, port = listener.address
    return ae.associate(host, port, ae_title=called, bind_address=bind or ("127.0.0.1", 0))


def context_of(assoc, sop_class: str):
    return next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def store_request(sop_class: str, sop_uid: str, data_set: bytes, message_id: int = 1) -> C_STORE:
    request = C_STORE()
    request.MessageID, request.Priority = message_id, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, sop_uid
    request.DataSet = io.BytesIO(data_set)
    return request


def paused(assoc):
    """Hold the requestor's reactor (as its own send_c_* do) so that we read the responses."""
    assoc._reactor_checkpoint.clear()
    wait_until(lambda: assoc._is_paused, 5.0)


def store_bytes(assoc, sop_class: str, sop_uid: str, data_set: bytes, context_class: str | None = None) -> int:
    """Send any bytes as a C-STORE data set; the response's status."""
    context = context_of(assoc, context_class or sop_class)
    paused(assoc)
    try:
        assoc.dimse.send_msg(store_request(sop_class, sop_uid, data_set), context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return int(response.Status)


def store_part10(assoc, part10: bytes) -> int:
    ds = pydicom.dcmread(io.BytesIO(part10))
    return store_bytes(assoc, ds.SOPClassUID, ds.SOPInstanceUID, dataset_of(part10))


def one_instance(seed: int, rows: int = 16) -> tuple[str, bytes]:
    study = make_study(series=1, instances=1, rows=rows, columns=rows, seed=seed)
    return next(iter(study.instances.items()))


def rewrite(part10: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(part10))
    for name, value in changes.items():
        setattr(ds, name, value)
    return to_part10(ds)


# -- C-ECHO and C-STORE from dcmtk -----------------------------------------------------------------
def test_echoscu_is_answered(listener):
    require_dcmtk()
    host, port = listener.address
    result = subprocess.run(["echoscu", "-aec", AE_TITLE, host, str(port)], check=False, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr


def test_storescu_files_are_stored_byte_for_byte_on_one_association(listener, tmp_path):
    require_dcmtk()
    study = make_study(series=2, instances=3, rows=32, columns=32, seed=41)
    paths = write_files(tmp_path / "sent", study.instances)
    host, port = listener.address
    result = subprocess.run(["storescu", "-v", "-aec", AE_TITLE, host, str(port), *paths],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Requesting Association") == 1
    assert result.stderr.count("Received Store Response (Success)") == 6
    settled(listener)
    files = stored_files(listener)
    assert set(files) == set(study.instances)
    for sop_uid, sent in study.instances.items():
        kept = files[sop_uid]
        assert dataset_of(kept) == dataset_of(sent)  # the data set as sent, byte for byte
        meta = pydicom.dcmread(io.BytesIO(kept), stop_before_pixels=True).file_meta
        assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (sop_uid, ExplicitVRLittleEndian)
        assert meta.SourceApplicationEntityTitle == "STORESCU"
    assert leftovers(listener) == []


def test_a_compressed_instance_is_kept_in_its_transfer_syntax(listener, tmp_path):
    require_dcmtk()
    ds = pydicom.dcmread(io.BytesIO(one_instance(seed=55, rows=32)[1]))
    ds.compress(RLELossless)
    sent = to_part10(ds, RLELossless)
    host, port = listener.address
    result = subprocess.run(["storescu", "--propose-rle", "-aec", AE_TITLE, host, str(port),
                             *write_files(tmp_path / "r", {"r": sent})], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    settled(listener)
    [kept] = stored_files(listener).values()
    assert pydicom.dcmread(io.BytesIO(kept)).file_meta.TransferSyntaxUID == RLELossless  # no transcoding
    assert dataset_of(kept) == dataset_of(sent)


def test_an_unmodified_storescu_is_not_held_up_by_delayed_acks(listener, tmp_path):
    """dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment; without
    our immediate ACKs each instance would wait ~40 ms for one (latency.py)."""
    require_dcmtk()
    study = make_study(series=1, instances=40, rows=8, columns=8, seed=54)
    paths = write_files(tmp_path / "sent", study.instances)
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    host, port = listener.address
    started = time.monotonic()
    subprocess.run(["storescu", "-aec", AE_TITLE, host, str(port), *paths], check=True, capture_output=True,
                   timeout=60, env=env)
    assert time.monotonic() - started < 40 * 0.040  # what one delayed ACK per instance would cost
    settled(listener)
    assert len(stored_rows(listener)) == 40


def test_at_most_max_associations_at_once(make_listener):
    listener = make_listener(dicom={"max_associations": 1})
    first = associate(listener)
    try:
        second = associate(listener)
        assert second.is_rejected
        assert (second.acceptor.primitive.result_source, second.acceptor.primitive.diagnostic) == (0x03, 0x02)
    finally:
        first.release()
    third = associate(listener)  # room again
    assert third.is_established
    third.release()


def test_the_imaging_study_and_its_audit_event_come_from_a_c_store(listener, tmp_path):
    require_dcmtk()
    study = make_study(series=2, instances=2, rows=16, columns=16, seed=42, patient_id="PAT-C-STORE")
    host, port = listener.address
    subprocess.run(["storescu", "-aec", AE_TITLE, host, str(port), *write_files(tmp_path / "s", study.instances)],
                   check=True, capture_output=True, timeout=60)
    settled(listener)
    resource = imaging_study(listener, study.study_uid)
    assert resource["numberOfSeries"] == 2 and resource["numberOfInstances"] == 4
    assert {s["uid"] for s in resource["series"]} == {s.series_uid for s in study.series}
    events = [e for e in audit_events(listener) if detail(e, "service") == "C-STORE"]
    assert events and len(events) <= listener.inbox.stored_groups  # one per group and study, not per instance
    for event in events:
        assert event["patient"] == resource["subject"] and event["outcome"]["code"]["code"] == "0"
        assert detail(event, "StudyInstanceUID") == study.study_uid
        assert event["agent"][0]["who"]["identifier"]["value"] == "dicom:STORESCU"
        assert event["agent"][0]["networkString"] == "127.0.0.1"


def test_a_stream_of_instances_makes_few_imaging_study_versions(listener):
    study = make_study(series=1, instances=40, rows=8, columns=8, seed=43)
    assoc = associate(listener)
    try:
        assert [store_part10(assoc, data) for data in study.instances.values()] == [SUCCESS] * 40
    finally:
        assoc.release()
    settled(listener)
    assert len(stored_rows(listener)) == 40
    assert study_versions(listener) == listener.inbox.stored_groups < 40


def test_associations_at_once_share_commits(listener):
    study = make_study(series=3, instances=10, rows=8, columns=8, seed=56)
    statuses: list[int] = []

    def send(series) -> None:
        assoc = associate(listener)
        try:
            statuses.extend(store_part10(assoc, data) for data in series.instances.values())
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(series,)) for series in study.series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [SUCCESS] * 30
    settled(listener)
    assert len(stored_rows(listener)) == 30
    assert imaging_study(listener, study.study_uid)["numberOfSeries"] == 3
    assert study_versions(listener) == listener.inbox.stored_groups < 30


def test_the_same_instance_again_is_a_success_and_changes_nothing(listener):
    sop_uid, data = one_instance(seed=44)
    assoc = associate(listener)
    try:
        assert store_part10(assoc, data) == SUCCESS
        settled(listener)
        versions = study_versions(listener)
        assert store_part10(assoc, data) == SUCCESS
    finally:
        assoc.release()
    settled(listener)
    assert [row.sop_uid for row in stored_rows(listener)] == [sop_uid]
    assert study_versions(listener) == versions


# -- bad input: each refused, audited, nothing half-stored -----------------------------------------
@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")  # pydicom, reading the junk
def test_a_data_set_that_is_not_dicom_is_refused(listener):
    assoc = associate(listener)
    try:
        status = store_bytes(assoc, CT_IMAGE_STORAGE, generate_uid(UID_ROOT), b"this is not a DICOM data set" * 20)
    finally:
        assoc.release()
    assert status == CANNOT_UNDERSTAND
    assert_nothing_stored(listener)
    [event] = failures(listener)
    assert "C000" in event["outcome"]["detail"][0]["text"] and detail(event, "service") == "C-STORE"


def test_a_data_set_of_a_non_storage_sop_class_is_refused(listener):
    _, data = one_instance(seed=45)
    worklist = rewrite(data, SOPClassUID=MODALITY_WORKLIST)
    ds = pydicom.dcmread(io.BytesIO(worklist))
    assoc = associate(listener)
    try:  # on a storage context, under a storage class; the data set itself names the query model
        status = store_bytes(assoc, CT_IMAGE_STORAGE, ds.SOPInstanceUID, dataset_of(worklist))
    finally:
        assoc.release()
    assert status == NOT_SUPPORTED
    assert_nothing_stored(listener)
    [event] = failures(listener)
    assert detail(event, "SOPClassUID") == MODALITY_WORKLIST


def test_a_request_naming_a_non_storage_sop_class_ends_the_association(listener):
    _, data = one_instance(seed=53)
    ds = pydicom.dcmread(io.BytesIO(data))
    assoc = associate(listener)
    context = context_of(assoc, CT_IMAGE_STORAGE)
    paused(assoc)
    assoc.dimse.send_msg(store_request(MODALITY_WORKLIST, ds.SOPInstanceUID, dataset_of(data)), context.context_id)
    wait_until(lambda: not listener.server.active_associations, message="pynetdicom did not abort it")
    assoc._reactor_checkpoint.set()
    assoc.kill()
    assert_nothing_stored(listener)


def test_a_non_storage_sop_class_gets_no_presentation_context(listener):
    ae = AE(ae_title=SCU)
    ae.add_requested_context(MODALITY_WORKLIST + ".0")  # not offered by the listener at all
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(*listener.address, ae_title=AE_TITLE)
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CT_IMAGE_STORAGE]
    finally:
        assoc.release()


def test_an_unknown_calling_ae_is_rejected_and_audited(listener, tmp_path):
    require_dcmtk()
    _, data = one_instance(seed=46)
    host, port = listener.address
    result = subprocess.run(["storescu", "-aet", "INTRUDER", "-aec", AE_TITLE, host, str(port),
                             *write_files(tmp_path / "x", {"x": data})], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "Association Rejected" in result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr
    assert_nothing_stored(listener)
    [event] = failures(listener)
    assert event["agent"][0]["who"]["identifier"]["value"] == "dicom:INTRUDER"
    assert "A-ASSOCIATE-RJ" in event["outcome"]["detail"][0]["text"]


def test_a_known_ae_from_another_address_is_rejected(listener):
    assoc = associate(listener, bind=("127.0.0.2", 0))  # loopback too, but not the listed 127.0.0.1
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
    assert len(failures(listener)) == 1


def test_a_wrong_called_ae_is_rejected(listener):
    assoc = associate(listener, called="NOT_US")
    assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x07


def test_a_duplicate_with_other_content_is_refused_and_the_first_copy_kept(make_listener):
    listener = make_listener(push={"duplicate_policy": "reject"})
    sop_uid, first = one_instance(seed=47)
    other = rewrite(first, SeriesDescription="other content, same SOP Instance UID")
    assoc = associate(listener)
    try:
        assert store_part10(assoc, first) == SUCCESS
        assert store_part10(assoc, other) == DUPLICATE  # the first copy may still be in the inbox
        settled(listener)
        assert store_part10(assoc, other) == DUPLICATE  # ... or stored
    finally:
        assoc.release()
    settled(listener)
    assert stored_files(listener) == {sop_uid: stored_files(listener)[sop_uid]}
    assert dataset_of(stored_files(listener)[sop_uid]) == dataset_of(first)
    assert leftovers(listener) == []
    assert len(failures(listener)) == 2


def test_an_instance_over_the_size_limit_is_refused_and_its_file_removed(make_listener):
    listener = make_listener(push={"max_instance_bytes": 4096})
    _, small = one_instance(seed=48, rows=8)
    _, large = one_instance(seed=49, rows=64)  # 8 KB of pixel data
    assoc = associate(listener)
    try:
        assert store_part10(assoc, large) == OUT_OF_RESOURCES
        assert store_part10(assoc, small) == SUCCESS  # the association goes on
    finally:
        assoc.release()
    settled(listener)
    assert len(stored_rows(listener)) == 1 and leftovers(listener) == []


def send_half(assoc, part10: bytes) -> None:
    """The command and the first half of a C-STORE's data set fragments, then nothing more."""
    ds = pydicom.dcmread(io.BytesIO(part10))
    message = C_STORE_RQ()
    message.primitive_to_message(store_request(ds.SOPClassUID, ds.SOPInstanceUID, dataset_of(part10)))
    fragments = list(message.encode_msg(context_of(assoc, ds.SOPClassUID).context_id, 4096))
    paused(assoc)
    for primitive in fragments[: len(fragments) // 2]:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        assoc.dul.socket.socket.sendall(pdu.encode())


def test_an_association_that_stops_mid_data_set_leaves_nothing(listener):
    _, data = one_instance(seed=50, rows=128)  # 32 KB: 8 fragments of 4 KB
    assoc = associate(listener)
    send_half(assoc, data)
    staging = listener.ingest.blobstore.staging
    wait_until(lambda: any(staging.glob("part-*.tmp")), message="no partial file: the data set did not start")
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # the peer is gone: no A-ABORT, no release
    wait_until(lambda: not listener.server.active_associations and not leftovers(listener),
               message="the broken association left something behind")
    assoc.kill()
    assert_nothing_stored(listener)


def test_an_abandoned_association_times_out_and_leaves_nothing(make_listener):
    listener = make_listener(dicom={"network_timeout": 1.0})
    _, data = one_instance(seed=51, rows=128)
    assoc = associate(listener)
    try:
        send_half(assoc, data)  # ... and then silence
        started = time.monotonic()
        wait_until(lambda: not listener.server.active_associations, 10.0, "the association was not timed out")
        assert time.monotonic() - started < 5.0
    finally:
        assoc.kill()
    assert_nothing_stored(listener)


# -- Orthanc as the sender ------------------------------------------------------------------------
def test_orthanc_stores_a_study_into_the_listener(listener, tmp_path):
    from .orthanc_dimse import OrthancDicomServer
    study = make_study(series=2, instances=2, rows=16, columns=16, seed=52)
    (tmp_path / "orthanc").mkdir()
    orthanc = OrthancDicomServer(tmp_path / "orthanc")
    try:
        orthanc.upload_study(study)
        host, port = listener.address
        orthanc.add_modality("fhirimg", AE_TITLE, host, port)
        [orthanc_study] = orthanc.session.get(orthanc.url + "/studies", timeout=10).json()
        answer = orthanc.store_to("fhirimg", [orthanc_study])
    finally:
        orthanc.stop()
    assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == 4
    settled(listener)
    files = stored_files(listener)
    assert set(files) == set(study.instances)
    assert all(dataset_of(files[sop]) == dataset_of(sent) for sop, sent in study.instances.items())
    assert imaging_study(listener, study.study_uid)["numberOfInstances"] == 4


# -- a peer that drips its data set ---------------------------------------------------------------
class DripRelay:
    """A TCP relay to the listener that lets the first ``quick`` bytes through, then forwards
    the sender's bytes ``rate`` per second: an association that stays just inside the
    network timeout while it holds a slot."""

    def __init__(self, target: tuple[str, int], quick: int, rate: int):
        import socket
        self.target, self.quick, self.rate = target, quick, rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed_at: float | None = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        import socket
        client, _ = self.server.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self.pipe, args=(upstream, client, None), daemon=True).start()
        self.pipe(client, upstream, self.quick)

    def pipe(self, source, sink, quick: int | None) -> None:
        sent = 0
        try:
            while True:
                size = 65536 if quick is None or sent < quick else self.rate
                data = source.recv(size)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
                if quick is not None and sent >= quick:
                    time.sleep(1.0)
        except OSError:
            pass
        finally:
            if quick is not None and self.closed_at is None:
                self.closed_at = time.monotonic()
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass


def test_a_data_set_dripped_slower_than_the_minimum_rate_is_aborted(make_listener, tmp_path):
    require_dcmtk()
    listener = make_listener(dicom={"min_rate": 50_000, "min_rate_grace": 2.0})
    study = make_study(series=1, instances=1, rows=256, columns=256, seed=91)  # 128 KiB
    [(sop, data)] = study.instances.items()
    path = tmp_path / "drip.dcm"
    path.write_bytes(data)
    relay = DripRelay(listener.address, quick=4096, rate=2000)  # association + command, then 2 kB/s
    started = time.monotonic()
    result = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", AE_TITLE, "127.0.0.1", str(relay.port),
                             str(path)], capture_output=True, text=True, timeout=25)
    elapsed = time.monotonic() - started
    assert result.returncode != 0  # the association was aborted, storescu says so
    assert elapsed < 10, f"the dripping association lasted {elapsed:.1f} s"
    time.sleep(0.5)
    assert stored_rows(listener) == [] and leftovers(listener) == []
