"""The listener's pieces on their own: the allow-list, the Part-10 header and C-STORE
response it encodes by hand, and the inbox's
promise that an acknowledged instance is never lost (a crash before its commit, a store that
fails for a while, a store that refuses it after the fact)."""
from __future__ import annotations

import io

import pydicom
import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from fhirimg.dimse import inbox as inbox_module
from fhirimg.dimse import incoming
from fhirimg.dimse.callers import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    CallerList,
)
from fhirimg.dimse.filemeta import part10_header
from fhirimg.dimse.inbox import INBOX_DIR, REFUSED_DIR
from fhirimg.dimse.latency import store_response_command
from fhirimg.dimse.listener import Listener
from fhirimg.push.ingest import CANNOT_UNDERSTAND, PROCESSING_FAILURE, InstanceResult

from .test_listener import (  # noqa: F401
    OUT_OF_RESOURCES,
    SUCCESS,
    associate,
    dataset_of,
    failures,
    leftovers,
    make_listener,
    one_instance,
    settled,
    store_part10,
    stored_files,
    stored_rows,
    wait_until,
)


# -- the allow-list -------------------------------------------------------------------------------
def caller_list(*callers: tuple[str, list[str]]) -> CallerList:
    return CallerList({"ae_title": "FHIRIMG", "callers": [{"ae_title": ae, "hosts": hosts} for ae, hosts in callers]})


@pytest.mark.parametrize("calling, address, allowed", [
    ("CT1", "10.1.2.34", True), ("CT1", "10.1.2.35", False), ("MR1", "10.9.0.200", True),
    ("MR1", "::ffff:10.9.0.7", True),  # an IPv4 peer of a dual-stack socket
    ("MR1", "10.8.255.255", False), ("PACS", "10.1.2.34", False), ("CT1 ", "10.1.2.34", True)])
def test_a_caller_is_known_by_its_ae_title_and_its_address(calling, address, allowed):
    callers = caller_list(("CT1", ["10.1.2.34"]), ("MR1", ["10.9.0.0/24"]))
    refusal = callers.refusal(calling, "FHIRIMG", address)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.diagnostic == CALLING_AE_NOT_RECOGNISED


def test_the_called_ae_title_is_checked_first():
    refusal = caller_list(("CT1", ["10.1.2.34"])).refusal("INTRUDER", "OTHER", "192.0.2.1")
    assert refusal.diagnostic == CALLED_AE_NOT_RECOGNISED


def test_a_caller_host_must_be_an_address_not_a_name():
    with pytest.raises(ValueError, match="not an IP address"):
        caller_list(("CT1", ["ct1.hospital.example"]))


# -- the Part-10 header -----------------------------------------------------------------------------
@pytest.mark.parametrize("sop_class, sop_uid, syntax, sending_ae", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1", "STORESCU"),
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2", "AB"),
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2.4.50", "")])
def test_the_hand_written_header_is_pydicoms(sop_class, sop_uid, syntax, sending_ae):
    assert part10_header(sop_class, sop_uid, syntax, sending_ae) == \
        incoming.part10_header(sop_class, sop_uid, syntax, sending_ae)


# -- an acknowledged instance is never lost -----------------------------------------------------
def inbox_copy(listener: Listener, data: bytes, name: str = "0-crashed.dcm") -> None:
    """What a crash between the answer and the commit leaves: a Part-10 file in the inbox."""
    header = part10_header(*_meta(data), "CT_SCANNER")
    (listener.ingest.blobstore.root / INBOX_DIR / name).write_bytes(header + dataset_of(data))


def _meta(data: bytes) -> tuple[str, str, str]:
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID


def test_what_a_crash_left_in_the_inbox_is_stored_at_the_next_start(make_listener):  # noqa: F811
    first = make_listener()
    sop_uid, data = one_instance(seed=60)
    inbox_copy(first, data)
    first.stop()
    again = make_listener()  # the same blob root and database
    settled(again)
    assert dataset_of(stored_files(again)[sop_uid]) == dataset_of(data)
    assert leftovers(again) == []


def test_an_instance_acknowledged_and_not_committed_survives_a_crash(make_listener):  # noqa: F811
    crashed = make_listener()
    crashed.inbox.close()  # the committer is gone: as if the process died after its answers
    sop_uid, data = one_instance(seed=61)
    assoc = associate(crashed)
    try:
        assert store_part10(assoc, data) == SUCCESS  # durable, answered, not stored
    finally:
        assoc.release()
    assert stored_rows(crashed) == [] and len(list((crashed.ingest.blobstore.root / INBOX_DIR).glob("*.dcm"))) == 1
    restarted = make_listener()
    settled(restarted)
    assert [row.sop_uid for row in stored_rows(restarted)] == [sop_uid]
    assert leftovers(restarted) == []


def test_while_the_store_fails_new_instances_are_refused_and_the_acknowledged_one_is_retried(
        make_listener, monkeypatch):  # noqa: F811
    monkeypatch.setattr(inbox_module, "RETRY_FIRST", 0.3)
    listener = make_listener()
    real_store, calls = listener.ingest.store, []

    def failing_once(items, actor, service):
        calls.append(len(items))
        if len(calls) == 1:
            for staged, _ in items:
                staged.discard()
            return [InstanceResult(r.sop_class_uid, r.sop_uid, r.study_uid, r.series_uid, "failed",
                                   PROCESSING_FAILURE, "the database is down") for _, r in items]
        return real_store(items, actor, service)

    listener.ingest.store = failing_once
    (first_uid, first), (second_uid, second) = one_instance(seed=62), one_instance(seed=63)
    assoc = associate(listener)
    try:
        assert store_part10(assoc, first) == SUCCESS
        wait_until(lambda: listener.inbox.failing, message="the failure was not noticed")
        assert store_part10(assoc, second) == OUT_OF_RESOURCES  # not acknowledged while failing
        wait_until(lambda: not listener.inbox.failing, message="the retry did not store the first")
        assert store_part10(assoc, second) == SUCCESS
    finally:
        assoc.release()
    settled(listener)
    assert {row.sop_uid for row in stored_rows(listener)} == {first_uid, second_uid}
    assert leftovers(listener) == []


def test_an_instance_the_store_refuses_after_the_answer_is_kept_aside_and_audited(make_listener):  # noqa: F811
    listener = make_listener()

    def refusing(items, actor, service):
        for staged, _ in items:
            staged.discard()
        return [InstanceResult(r.sop_class_uid, r.sop_uid, r.study_uid, r.series_uid, "failed",
                               CANNOT_UNDERSTAND, "no valid ImagingStudy") for _, r in items]

    listener.ingest.store = refusing
    _, data = one_instance(seed=64)
    assoc = associate(listener)
    try:
        assert store_part10(assoc, data) == SUCCESS
    finally:
        assoc.release()
    settled(listener)
    [kept] = (listener.ingest.blobstore.root / REFUSED_DIR).glob("*.dcm")
    assert dataset_of(kept.read_bytes()) == dataset_of(data)
    assert stored_rows(listener) == [] and leftovers(listener) == []
    [event] = failures(listener)
    assert "no valid ImagingStudy" in event["outcome"]["detail"][0]["text"]


def test_a_second_listener_on_the_same_blob_root_is_refused(make_listener):  # noqa: F811
    make_listener()
    with pytest.raises(RuntimeError, match="one listener per blob root"):
        make_listener()


# -- the C-STORE response, encoded by hand -----------------------------------------------------------
@pytest.mark.parametrize("sop_uid, status, message_id", [("1.2.3.4.5", 0x0000, 1), ("1.2.3.4.56", 0xC000, 65535),
                                                          ("1.2.3", 0x0111, 7)])
def test_the_hand_written_store_response_is_pynetdicoms(sop_uid, status, message_id):
    response = C_STORE()
    response.MessageIDBeingRespondedTo, response.Status = message_id, status
    response.AffectedSOPClassUID, response.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop_uid
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    [pdata] = message.encode_msg(1, 16384)
    [(_, fragment)] = pdata.presentation_data_value_list
    assert fragment == b"\x03" + store_response_command("1.2.840.10008.5.1.4.1.1.2", sop_uid, message_id, status)
