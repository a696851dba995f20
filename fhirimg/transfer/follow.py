"""The ImagingStudy follows retrieved images as they are stored, in the transaction that
indexes them (as it does for pushed ones, push/ingest.py).

A retrieve hands each group of checked instances to the committer; with this blob store in
its place, a group's index rows and the merge of its instances into the Task's ImagingStudy
(push/mapping.py: elements the resource has are kept, series and instances merged by UID,
counts only grow) commit together, so FHIR never lists fewer instances than QIDO-RS and
WADO-RS can serve. One new version per group at most (none when the group adds nothing).
fhirimg's own DICOMweb Endpoint is added only when the study is complete (tasks.py), so a
partial study never points a client at instances that are not here.
"""
from __future__ import annotations

import logging

from fhirimg.errors import Conflict, FhirError, PreconditionFailed
from fhirimg.resources import validate_resource
from fhirimg.store import Repository

from .blobstore import BlobStore, InstanceRecord, StagedFile

log = logging.getLogger("fhirimg.transfer")
ATTEMPTS = 4


class StudyFollowingStore:
    """A BlobStore whose group commits also update one ImagingStudy; everything else is the
    wrapped store's."""

    def __init__(self, blobstore: BlobStore, repo: Repository, study_id: str):
        self.blobstore, self.repo, self.study_id = blobstore, repo, study_id

    def __getattr__(self, name):
        return getattr(self.blobstore, name)

    def commit(self, staged: StagedFile, record: InstanceRecord) -> InstanceRecord:
        return self.commit_many([(staged, record)])[0]

    def commit_many(self, items: list[tuple[StagedFile, InstanceRecord]]) -> list[InstanceRecord]:
        placed = self.blobstore.place(items)
        self.index_placed(placed)
        return placed

    def index_placed(self, placed: list[InstanceRecord]) -> None:
        """Index rows and the ImagingStudy's merge of the placed instances, one transaction."""
        if not placed:
            return
        old: list = []
        for attempt in range(ATTEMPTS):
            try:
                with self.repo.transaction() as uow:
                    old = self.blobstore.index_rows(uow.conn, placed)
                    self.follow(uow, placed)
                break
            except (Conflict, PreconditionFailed):  # the ImagingStudy was written meanwhile (an EHR's PUT): again
                if attempt == ATTEMPTS - 1:
                    raise
        self.blobstore.remove_moved(old, placed)

    def follow(self, uow, placed: list[InstanceRecord]) -> None:
        from fhirimg.push.mapping import merged_study
        current = uow.read("ImagingStudy", self.study_id)
        if current is None or current.is_deleted or not placed:
            return
        merged = merged_study(current.resource, placed, None, None)
        try:
            validate_resource(merged, "ImagingStudy")
        except FhirError as exc:  # the instances are stored all the same; the end of the Task reconciles
            log.warning("ImagingStudy/%s: the headers of %d retrieved instances do not merge into a valid "
                        "resource (%s); it is updated when the Task ends", self.study_id, len(placed), exc)
            return
        uow.update("ImagingStudy", self.study_id, merged, if_match=current.version)
