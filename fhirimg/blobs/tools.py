"""The operator's tools over stored objects, as plain functions (the CLI prints what they
return): verify each object against its index row, reconcile objects and rows after a
crash, and copy a file-system archive into a bucket.

- ``verify``: every row's object is read whole and its size and SHA-256 compared.
- ``fsck``: an object without a row is indexed when it passes the same checks as an
  arriving instance and its UIDs give exactly its key; one that does not is reported, never
  deleted. A row without an object is removed and its study's retrieve is started again (a
  retrieve Task, which the workers' reconciler enqueues) when the ImagingStudy names a
  source; else the instance is reported lost.
- ``migrate``: every row's file is copied to the bucket under the same key (conditional
  create, the server checking the SHA-256); an object already there with the same hash is
  skipped, so an interrupted migration resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlalchemy import delete, select

from ..store import Repository
from ..transfer.blobstore import BlobStore, InstanceRecord
from ..transfer.dicomcheck import RejectedPart, inspect_part10
from ..transfer.schema import dicom_instance
from .objects import ObjectConflict, Placement

BLOCK = 1 << 20


@dataclass
class Report:
    checked: int = 0
    ok: int = 0
    problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def rows(store: BlobStore, study_uid: str | None = None) -> Iterator:
    query = select(dicom_instance.c.sop_uid, dicom_instance.c.study_uid, dicom_instance.c.path,
                   dicom_instance.c.size, dicom_instance.c.sha256).order_by(dicom_instance.c.path)
    if study_uid:
        query = query.where(dicom_instance.c.study_uid == study_uid)
    with store.engine.connect() as conn:
        yield from conn.execute(query)


def digest_of(store: BlobStore, key: str) -> tuple[int, str]:
    hasher, size = hashlib.sha256(), 0
    with store.open(key) as fh:
        while block := fh.read(BLOCK):
            hasher.update(block)
            size += len(block)
    return size, hasher.hexdigest()


def verify(store: BlobStore, study_uid: str | None = None, progress: Callable[[int], None] = lambda n: None) -> Report:
    report = Report()
    for row in rows(store, study_uid):
        report.checked += 1
        try:
            size, sha = digest_of(store, row.path)
        except (FileNotFoundError, OSError) as exc:
            report.problems.append(f"{row.path}: missing ({type(exc).__name__})")
            continue
        except Exception as exc:  # noqa: BLE001 - obstore errors: one line each, the scan goes on
            report.problems.append(f"{row.path}: unreadable: {type(exc).__name__}: {exc}")
            continue
        if size != row.size or sha != row.sha256:
            report.problems.append(f"{row.path}: {size} bytes, sha256 {sha[:16]}..., the index has "
                                   f"{row.size} bytes, {row.sha256[:16]}...")
        else:
            report.ok += 1
        progress(report.checked)
    return report


def fsck(store: BlobStore, repo: Repository, repair: bool = False, own_base: str = "") -> Report:
    report = Report()
    indexed = {row.path: row for row in rows(store)}
    stored = dict(store.objects.keys())
    report.checked = len(indexed) + len(set(stored) - set(indexed))
    for key in sorted(set(stored) - set(indexed)):
        record = checked_object(store, key, report)
        if record is not None and repair:
            with store.engine.begin() as conn:
                store.index_rows(conn, [record])
            report.actions.append(f"{key}: indexed")
    lost = sorted(set(indexed) - set(stored))
    for key in lost:
        report.problems.append(f"{key}: the index names it, the store does not have it")
    if lost and repair:
        repair_missing(store, repo, [indexed[key] for key in lost], report, own_base)
    report.ok = len(set(indexed) & set(stored))
    return report


def checked_object(store: BlobStore, key: str, report: Report) -> InstanceRecord | None:
    """An unindexed object's record if it is a valid instance whose UIDs make exactly its key."""
    staged = store.open_staging()
    try:
        with store.open(key) as fh:
            shutil.copyfileobj(fh, staged.file, BLOCK)
            staged.size = staged.file.tell()
        staged.file.close()
        record = inspect_part10(staged.path, None)
        if store.relative_path(record.study_uid, record.series_uid, record.sop_uid) != key:
            report.problems.append(f"{key}: not indexed; its UIDs name another key, left alone")
            return None
        from ..transfer.blobstore import sha256_of_file
        record.path, record.size, record.sha256 = key, staged.size, sha256_of_file(staged.path)
        record.stored_ms = store.clock()
        report.problems.append(f"{key}: not indexed; a valid instance")
        return record
    except (RejectedPart, ValueError) as exc:
        report.problems.append(f"{key}: not indexed and not a valid instance ({exc}); left alone")
        return None
    finally:
        staged.discard()


def repair_missing(store: BlobStore, repo: Repository, lost: list, report: Report, own_base: str) -> None:
    """Drop the rows of lost objects; start a retrieve for each study that names a source."""
    from ..transfer.sources import TaskFailure, check_retrievable
    from ..transfer.tasks import start_retrieve
    with store.engine.begin() as conn:
        conn.execute(delete(dicom_instance).where(dicom_instance.c.sop_uid.in_([row.sop_uid for row in lost])))
    for study_uid in sorted({row.study_uid for row in lost}):
        with repo.transaction() as uow:
            ids = uow.search_ids("ImagingStudy", [("identifier", f"urn:dicom:uid|urn:oid:{study_uid}")])
            if not ids:
                report.actions.append(f"study {study_uid}: rows removed; no ImagingStudy names it, nothing to retrieve")
                continue
            study = uow.read("ImagingStudy", ids[0])
            try:
                check_retrievable(uow, study.resource, own_base)  # never from ourselves
            except TaskFailure as exc:
                report.actions.append(f"study {study_uid}: rows removed; lost, cannot be retrieved: {exc}")
                continue
            task, _ = start_retrieve(uow, ids[0], "routine", repo.clock())
            report.actions.append(f"study {study_uid}: rows removed; retrieve Task/{task.res_id} started")


def migrate(source: BlobStore, target, progress: Callable[[int], None] = lambda n: None) -> Report:
    """Copy every indexed file of ``source`` (file objects) to ``target`` (S3Objects)."""
    report = Report()
    for row in rows(source):
        report.checked += 1
        path = source.absolute_path(row.path)
        try:
            size, sha = digest_of(source, row.path)
        except FileNotFoundError:
            report.problems.append(f"{row.path}: the index names it, the file is missing: not copied")
            continue
        if size != row.size or sha != row.sha256:
            report.problems.append(f"{row.path}: the file does not match its index row: not copied")
            continue
        try:
            target.put_many([Placement(path, row.path, row.sha256, row.size, replace=False)])
            report.ok += 1
        except ObjectConflict as exc:
            report.problems.append(f"{row.path}: {exc}: not copied")
        progress(report.checked)
    return report
