"""The listener's C-STORE: each data set to a staging file as it arrives, then one answer.

Receiving (DUL thread, through incoming.IncomingMessages): the data set's fragments go to a
staging file behind a Part-10 header of ours (PS3.10 §7.1); the data set bytes are kept as
sent, so the stored file is the sender's data set byte for byte (no decode, no re-encode:
pynetdicom issues #367/#801). Past ``[push] max_instance_bytes`` the file is dropped at once
and the rest of the data set is read and thrown away; the request is then refused (A700).

Answering (association thread): the ingest's checks (Part-10, UIDs, a storage SOP class,
complete), the command's Affected SOP Class/Instance UIDs against the data set's, a copy of
the same SOP Instance with other content (0111 under ``duplicate_policy = reject``, against
the index and the inbox), a patient that could not be matched for a new study; then the
instance is made durable in the inbox and the answer is success. Status codes, PS3.4 B.2.3:
0000 success; A700 out of resources; A900 data set does not match SOP class; C000 cannot
understand; 0111 duplicate SOP instance; 0122 SOP class not supported. No warning applies:
nothing is coerced (B000) and the IOD is not validated (B007).
"""
from __future__ import annotations

import logging
import threading

from ..audit.events import Actor
from ..push.ingest import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    Ingest,
    Refused,
)
from ..push.mapping import study_criteria
from ..push.patients import PatientUnmatched, patient_key
from ..store import driver
from ..transfer.blobstore import InstanceRecord, StagedFile
from .filemeta import part10_header
from .inbox import Inbox
from .incoming import DroppedInstance, IncomingMessages
from .refusals import instance_refused

log = logging.getLogger("fhirimg.dimse")

SUCCESS = 0x0000
HELD_COPIES = {sqlite: f"SELECT sha256, study_uid FROM dicom_instance WHERE sop_uid = {'?' if sqlite else '%s'}"
               for sqlite in (True, False)}


class ReceivedInstance:
    """One C-STORE data set on its way to a staging file (incoming.IncomingInstance)."""

    def __init__(self, staged: StagedFile, sop_uid: str, allowance: int):
        self.staged: StagedFile | None = staged
        self.sop_uid, self.allowance = sop_uid, allowance
        self.too_large = False

    def write(self, data) -> None:
        if self.staged is None:
            return  # cut at its allowance: the rest is read off the wire and dropped
        if self.staged.size + len(data) > self.allowance:
            self.too_large = True
            self.discard()
            return
        self.staged.write(data)

    def discard(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            staged.discard()


class StagingTarget:
    """Where the listener's C-STORE data sets go (incoming.StoreTarget)."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest

    def begin(self, sop_class_uid: str, sop_uid: str, header: bytes) -> ReceivedInstance:
        received = ReceivedInstance(self.ingest.open_staging(), sop_uid, self.ingest.settings.max_instance_bytes)
        received.write(header)
        return received


class ListenerMessages(IncomingMessages):
    """incoming.IncomingMessages with the hand-encoded Part-10 header (filemeta.py)."""

    def begin(self, context_id: int, message):
        command = message.command_set
        sop_class, sop_uid = str(command.AffectedSOPClassUID or ""), str(command.AffectedSOPInstanceUID or "")
        syntax = self.transfer_syntax(context_id)
        if syntax is None or not sop_class or not sop_uid:
            return DroppedInstance(sop_uid)  # answered C000: no data set kept
        return self.target.begin(sop_class, sop_uid, part10_header(sop_class, sop_uid, syntax, self.sending_ae))


class StoreService:
    """Decides the answer to one received C-STORE request."""

    def __init__(self, ingest: Ingest, inbox: Inbox):
        self.ingest, self.inbox = ingest, inbox
        self.connections = threading.local()  # one per association thread

    def answer(self, received: ReceivedInstance | None, sop_class_uid: str, sop_uid: str, actor: Actor) -> int:
        """The status of the C-STORE response; success only once the instance is durable."""
        staged = received.staged if isinstance(received, ReceivedInstance) else None
        try:
            if received is not None and getattr(received, "too_large", False):
                raise Refused(OUT_OF_RESOURCES, f"the data set is larger than [push] max_instance_bytes "
                                                f"({self.ingest.settings.max_instance_bytes})", sop_class_uid, sop_uid)
            if staged is None:
                raise Refused(CANNOT_UNDERSTAND, "no data set was received", sop_class_uid, sop_uid)
            self.ingest.blobstore.start_sync(staged)  # the fsync overlaps the checks
            record = self.ingest.check(staged)
            require_command_match(record, sop_class_uid, sop_uid)
            self.require_no_conflict(staged, record)
            self.require_patient(record)
            self.inbox.accept(staged, record, actor)
        except Refused as exc:
            return self.refuse(staged, actor, exc.code, exc.reason, exc.sop_uid or sop_uid,
                               exc.sop_class_uid or sop_class_uid)
        except Exception as exc:  # the database or the disk: this instance fails, the listener goes on
            log.exception("C-STORE of %s from %s failed", sop_uid, actor.client_id)
            return self.refuse(staged, actor, PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}", sop_uid,
                               sop_class_uid)
        return SUCCESS

    def refuse(self, staged: StagedFile | None, actor: Actor, code: int, reason: str, sop_uid: str,
               sop_class_uid: str) -> int:
        if staged is not None:
            staged.discard()
        instance_refused(self.ingest.repo.engine, actor, code, reason, sop_uid, sop_class_uid)
        return code

    def require_no_conflict(self, staged: StagedFile, record: InstanceRecord) -> None:
        """Under ``reject``, another copy of this SOP Instance (stored, or acknowledged and
        waiting in the inbox) with other bytes or in another study is refused now, while the
        peer can still be told."""
        if self.ingest.settings.duplicate_policy != "reject":
            return
        held = self.stored_copies(record.sop_uid) + self.inbox.held_copies(record.sop_uid)
        if any(held_copy != (staged.sha256, record.study_uid) for held_copy in held):
            raise Refused(DUPLICATE_SOP_INSTANCE, f"SOP Instance {record.sop_uid} is already held with other content "
                          "([push] duplicate_policy = reject)", record.sop_class_uid, record.sop_uid)

    def stored_copies(self, sop_uid: str) -> list[tuple[str, str]]:
        """(sha256, study UID) of the indexed copy, if any. Once per instance on the answer's
        path, so on the driver's cursor (store/driver.py) and on a connection the association's
        thread keeps (the pool's checkout and checkin cost as much as the query)."""
        conn = getattr(self.connections, "conn", None)
        if conn is None:
            conn = self.connections.conn = self.ingest.repo.engine.connect()
        try:
            rows = driver.fetch_all(conn, HELD_COPIES[conn.dialect.name == "sqlite"], (sop_uid,))
            conn.rollback()  # no snapshot held between instances: the next query sees new commits
        except Exception:
            self.release_connection()
            raise
        return [tuple(row) for row in rows]

    def release_connection(self) -> None:
        """At the end of an association, from its thread."""
        conn, self.connections.conn = getattr(self.connections, "conn", None), None
        if conn is not None:
            conn.close()

    def require_patient(self, record: InstanceRecord) -> None:
        """A new study needs a Patient the headers can be matched to (push/patients.py); a
        study already held keeps its own, so only then does an unmatched ID not matter."""
        try:
            patient_key(record.attributes, self.ingest.settings)
            return
        except PatientUnmatched as exc:
            reason = str(exc)
        if self.inbox.holds_study(record.study_uid):
            return
        with self.ingest.repo.reading() as uow:
            if uow.search_ids("ImagingStudy", study_criteria(record.study_uid)):
                return
        raise Refused(CANNOT_UNDERSTAND, reason, record.sop_class_uid, record.sop_uid)


def require_command_match(record: InstanceRecord, sop_class_uid: str, sop_uid: str) -> None:
    """PS3.4 B.2.3: the command's Affected SOP Class/Instance UIDs name the data set sent."""
    if record.sop_uid != sop_uid:
        raise Refused(DOES_NOT_MATCH_SOP_CLASS, f"the data set's SOP Instance UID {record.sop_uid} is not the "
                      f"Affected SOP Instance UID {sop_uid} of the request", record.sop_class_uid, record.sop_uid)
    if record.sop_class_uid != sop_class_uid:
        raise Refused(DOES_NOT_MATCH_SOP_CLASS, f"the data set's SOP Class UID {record.sop_class_uid} is not the "
                      f"Affected SOP Class UID {sop_class_uid} of the request", record.sop_class_uid, record.sop_uid)
