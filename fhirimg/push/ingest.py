"""The one way pushed instances enter fhirimg, whichever door they came through (STOW-RS,
C-STORE): check each, then per study one database transaction that indexes the instances
and brings the ImagingStudy (and its Patient) in step, with an audit event naming both.

Order of durability, as for retrieved instances: a staged file is fsynced and renamed
into the blob store before the transaction that indexes it commits, so an index row
always names a complete file. A crash between the two leaves a file without a row; the
instance was not acknowledged, and its next arrival replaces the file with itself.

Duplicates (``[push] duplicate_policy``): the same SOP Instance UID with the same bytes is a
success and nothing is rewritten; with other bytes it is refused (0111, Duplicate SOP
Instance) under ``reject``, and under ``overwrite`` the new copy replaces the old one by an
atomic rename once it is durable, never by deleting the stored copy first.

Concurrency: the transaction first takes the lock a conditional write on the study's
identifier takes (PostgreSQL advisory lock; SQLite holds its write lock from BEGIN), so
two pushes of one study, or a push and an EHR's conditional create of the same
ImagingStudy, are serialised and converge on one resource.
"""
from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from dataclasses import dataclass

from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.service_class import StorageServiceClass
from sqlalchemy import select

from ..audit.chain import append_events
from ..audit.events import Actor, event_rows
from ..bundle.process import lock_criteria
from ..errors import Conflict, FhirError
from ..resources import validate_resource
from ..store import Repository
from ..store.engine import make_engine
from ..transfer.blobstore import BlobStore, InstanceRecord, StagedFile
from ..transfer.dicomcheck import ElementJsonCache, RejectedPart, inspect_staged
from ..transfer.schema import dicom_instance
from ..transfer.settings import own_dicomweb_base
from ..blobs.store import make_blobstore
from ..transfer.studyupdate import OWN_ENDPOINT_ID, own_endpoint_resource
from .mapping import merged_study, study_criteria
from .patients import PatientUnmatched, match_patient, patient_key
from .settings import PushSettings, push_settings

log = logging.getLogger("fhirimg.push")

# DICOM status codes (PS3.4 Annex B.2.3, PS3.7 C.4) used as STOW Failure Reasons too.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110
ATTEMPTS = 4  # a concurrent write of the same ImagingStudy (an EHR's PUT) retries the transaction


class Refused(Exception):
    """An instance that may not be stored, with the DICOM status that says why."""

    def __init__(self, code: int, reason: str, sop_class_uid: str = "", sop_uid: str = ""):
        super().__init__(f"{code:04X}: {reason}")
        self.code, self.reason = code, reason
        self.sop_class_uid, self.sop_uid = sop_class_uid, sop_uid


@dataclass
class InstanceResult:
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    status: str  # "stored" | "unchanged" (the same copy was already held) | "failed"
    code: int = 0  # 0 success, else a failure status
    reason: str = ""
    warning: int | None = None
    study: str | None = None  # "ImagingStudy/<id>" it is listed in

    @property
    def ok(self) -> bool:
        return self.status != "failed"


REJECTION_CODES = {"not-dicom": CANNOT_UNDERSTAND, "truncated": CANNOT_UNDERSTAND,
                   "invalid-uid": DOES_NOT_MATCH_SOP_CLASS}


class Ingest:
    """Checks and stores pushed instances; one per process is enough (it is thread-safe)."""

    def __init__(self, repo: Repository, blobstore: BlobStore, settings: PushSettings, dicomweb_base: str):
        self.repo, self.blobstore, self.settings = repo, blobstore, settings
        self.dicomweb_base = dicomweb_base.rstrip("/")
        self.cache = ElementJsonCache()

    @classmethod
    def from_config(cls, config: dict, engine=None, role: str = "fhirimg-push") -> "Ingest":
        engine = engine or make_engine(config["database_url"])
        return cls(Repository(engine, role=role), make_blobstore(config, engine), push_settings(config),
                   own_dicomweb_base(config))

    def open_staging(self) -> StagedFile:
        return self.blobstore.open_staging()

    # -- checks ------------------------------------------------------------------------------
    def check(self, staged: StagedFile, study_uid: str | None = None) -> InstanceRecord:
        """The record of a complete, valid storage instance; else Refused (the caller discards)."""
        if staged.size > self.settings.max_instance_bytes:
            raise Refused(OUT_OF_RESOURCES, f"the instance is {staged.size} bytes; this server takes at most "
                                            f"{self.settings.max_instance_bytes} ([push] max_instance_bytes)")
        try:
            record = inspect_staged(staged, None, self.cache)
        except RejectedPart as exc:
            raise Refused(REJECTION_CODES.get(exc.reason, CANNOT_UNDERSTAND), exc.detail, sop_uid=exc.sop_uid or "") \
                from None
        if uid_to_service_class(record.sop_class_uid) is not StorageServiceClass:
            raise Refused(SOP_CLASS_NOT_SUPPORTED, f"SOP Class {record.sop_class_uid} is not a storage SOP class",
                          record.sop_class_uid, record.sop_uid)
        if study_uid is not None and record.study_uid != study_uid:
            raise Refused(DOES_NOT_MATCH_SOP_CLASS, f"StudyInstanceUID {record.study_uid} differs from the study "
                          f"{study_uid} of the request URL", record.sop_class_uid, record.sop_uid)
        return record

    # -- storing -----------------------------------------------------------------------------
    def store(self, items: list[tuple[StagedFile, InstanceRecord]], actor: Actor, service: str) -> list[InstanceResult]:
        """Store checked instances; one result per item, in order. Never raises for one
        study's trouble: its instances fail with a status and the others go on."""
        results: dict[int, InstanceResult] = {}
        by_study: OrderedDict[str, list[int]] = OrderedDict()
        for index, (_, record) in enumerate(items):
            by_study.setdefault(record.study_uid, []).append(index)
        for study_uid, indexes in by_study.items():
            group = [items[i] for i in indexes]
            for index, result in zip(indexes, self.store_study(study_uid, group, actor, service)):
                results[index] = result
        return [results[i] for i in range(len(items))]

    def store_study(self, study_uid: str, group: list[tuple[StagedFile, InstanceRecord]], actor: Actor,
                    service: str) -> list[InstanceResult]:
        group = last_of_each(group)  # the same instance twice in one push: the later copy counts
        results = {record.sop_uid: result_of(record, "stored") for _, record in group}
        job = StudyStore(self, study_uid, group, actor, service, results)
        try:
            job.run()
        except Refused as exc:
            job.discard()
            fail_all(results.values(), exc.code, exc.reason)
        except OSError as exc:
            job.discard()
            log.exception("push: storing study %s failed", study_uid)
            code = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else PROCESSING_FAILURE
            fail_all(results.values(), code, f"storage failed: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a database outage fails this study, not the process
            job.discard()
            log.exception("push: storing study %s failed", study_uid)
            fail_all(results.values(), PROCESSING_FAILURE, f"{type(exc).__name__}: the instances could not be "
                                                           "recorded; nothing was stored")
        return [results[record.sop_uid] for _, record in group]


def last_of_each(group: list[tuple[StagedFile, InstanceRecord]]) -> list[tuple[StagedFile, InstanceRecord]]:
    kept: dict[str, tuple[StagedFile, InstanceRecord]] = {}
    for staged, record in group:
        earlier = kept.pop(record.sop_uid, None)
        if earlier is not None:
            earlier[0].discard()
        kept[record.sop_uid] = (staged, record)
    return list(kept.values())


def result_of(record: InstanceRecord, status: str) -> InstanceResult:
    return InstanceResult(record.sop_class_uid, record.sop_uid, record.study_uid, record.series_uid, status)


def fail_all(results, code: int, reason: str) -> None:
    for result in results:
        if result.status != "failed":
            result.status, result.code, result.reason = "failed", code, reason


class StudyStore:
    """One study's share of a push: the transaction, and what to undo if it does not commit."""

    def __init__(self, ingest: Ingest, study_uid: str, group, actor: Actor, service: str, results: dict):
        self.ingest, self.study_uid, self.group = ingest, study_uid, group
        self.actor, self.service, self.results = actor, service, results
        self.placed: list[InstanceRecord] = []
        self.new_paths: list[str] = []  # files placed where no indexed copy was: removed on failure
        self.committed = False

    def run(self) -> None:
        repo = self.ingest.repo
        for attempt in range(ATTEMPTS):
            try:
                with repo.transaction(actor=self.actor) as uow:
                    old = self.write(uow)
                self.committed = True
                break
            except Conflict:
                if attempt == ATTEMPTS - 1:
                    raise
        self.ingest.blobstore.remove_moved(old, self.placed)

    def write(self, uow) -> list:
        first = self.group[0][1].attributes
        settings = self.ingest.settings
        study_lock = ("ImagingStudy", study_criteria(self.study_uid))
        key = None
        try:
            key = patient_key(first, settings)
        except PatientUnmatched:
            pass  # needed only when the study is new (below)
        lock_criteria(uow, [study_lock] + ([("Patient", key.criteria)] if key else []))
        fresh = self.classify(uow)
        current_id, current = self.current_study(uow)
        subject = None
        if current is None:  # a new study: its Patient is matched or made from the headers
            try:
                subject = match_patient(uow, key or patient_key(first, settings), first)
            except PatientUnmatched as exc:
                raise Refused(CANNOT_UNDERSTAND, str(exc)) from None
        endpoint = f"Endpoint/{OWN_ENDPOINT_ID}"
        study = merged_study(current, [record for _, record in self.group], subject, endpoint)
        try:
            validate_resource(study, "ImagingStudy")
        except FhirError as exc:
            raise Refused(CANNOT_UNDERSTAND, f"the headers do not make a valid ImagingStudy: {exc}") from None
        old = self.place_and_index(uow, fresh)
        endpoint_resource = own_endpoint_resource(self.ingest.dicomweb_base)
        uow.update("Endpoint", OWN_ENDPOINT_ID, endpoint_resource)
        stored = uow.update("ImagingStudy", current_id, study) if current_id else uow.create("ImagingStudy", study)
        location = f"ImagingStudy/{stored.res_id}"
        for result in self.results.values():
            result.study = location
        self.audit(uow, location, study)
        return old

    def classify(self, uow) -> list[tuple[StagedFile, InstanceRecord]]:
        """Which instances are new or replace another copy; identical copies succeed unchanged."""
        table = dicom_instance
        uids = [record.sop_uid for _, record in self.group]
        held = {row.sop_uid: row for row in uow.conn.execute(
            select(table.c.sop_uid, table.c.sha256, table.c.study_uid).where(table.c.sop_uid.in_(uids)))}
        fresh = []
        for staged, record in self.group:
            row = held.get(record.sop_uid)
            if row is None:
                fresh.append((staged, record))
                continue
            if row.sha256 == staged.sha256 and row.study_uid == record.study_uid:
                self.results[record.sop_uid].status = "unchanged"
                staged.discard()
                continue
            if self.ingest.settings.duplicate_policy == "reject":
                result = self.results[record.sop_uid]
                result.status, result.code = "failed", DUPLICATE_SOP_INSTANCE
                result.reason = (f"SOP Instance {record.sop_uid} is already held with other content "
                                 "([push] duplicate_policy = reject)")
                staged.discard()
                continue
            fresh.append((staged, record))
        self.group = [(s, r) for s, r in self.group if self.results[r.sop_uid].status != "failed"]
        if not self.group:
            raise Refused(DUPLICATE_SOP_INSTANCE, next(iter(self.results.values())).reason)
        return fresh

    def current_study(self, uow) -> tuple[str | None, dict | None]:
        found = uow.search_ids("ImagingStudy", study_criteria(self.study_uid))
        if len(found) > 1:
            raise Refused(CANNOT_UNDERSTAND, f"{len(found)} ImagingStudy resources have the identifier of study "
                          f"{self.study_uid}; the images are not linked to any of them")
        if not found:
            return None, None
        stored = uow.read("ImagingStudy", found[0])
        return stored.res_id, stored.resource

    def place_and_index(self, uow, fresh) -> list:
        """Files durable under their names, then their rows in this transaction (once: a
        retried transaction finds them placed)."""
        if fresh and not self.placed:
            already = {row.sop_uid for row in uow.conn.execute(
                select(dicom_instance.c.sop_uid).where(dicom_instance.c.sop_uid.in_([r.sop_uid for _, r in fresh])))}
            self.placed = self.ingest.blobstore.place(fresh)
            self.new_paths = [r.path for r in self.placed if r.sop_uid not in already]
        return self.ingest.blobstore.index_rows(uow.conn, self.placed) if self.placed else []

    def audit(self, uow, location: str, study: dict) -> None:
        counts = {status: sum(1 for r in self.results.values() if r.status == status)
                  for status in ("stored", "unchanged", "failed")}
        subject = (study.get("subject") or {}).get("reference") or ""
        patient = subject[8:] if subject.startswith("Patient/") else None
        act = self.actor.act("create", self.ingest.repo.clock(), status=201 if counts["stored"] else 200,
                             resources=[location],
                             details={"service": self.service, "StudyInstanceUID": self.study_uid,
                                      **{f"instances-{k}": str(v) for k, v in counts.items()}})
        append_events(uow.conn, event_rows(act, [patient]))

    def discard(self) -> None:
        """The transaction did not commit: no staged file stays, and no file placed where no
        copy was indexed (a replaced copy stays replaced; its row still names the old hash)."""
        for staged, _ in self.group:
            staged.discard()
        if not self.committed:
            for path in self.new_paths:
                self.ingest.blobstore.delete(path)
