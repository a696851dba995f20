"""Automatic retrieval on push: ``[[transfer.rules]]`` turn new ImagingStudy versions into Tasks.

The rules read the change sequence (every committed write, in commit order) from a cursor
kept in the database, so a push made while no worker ran is still seen, and each version
is considered once. A study matches a rule when one of its DICOMweb Endpoints starts
with the rule's address prefix and (if the rule names modalities) it has one of them. A
study whose listed instances are all stored already gets no Task: that is how fhirimg's
own update after a completed retrieve does not start another one.
"""
from __future__ import annotations

import logging

import orjson
from sqlalchemy import select, update

from fhirimg.store import Repository
from fhirimg.store.schema import resource_version

from .blobstore import BlobStore
from .schema import transfer_cursor
from .sources import TaskFailure, dicomweb_addresses, study_uid_of
from .tasks import start_retrieve

log = logging.getLogger("fhirimg.transfer")
CURSOR = "auto-retrieve"
BATCH = 500


def apply_rules(repo: Repository, blobstore: BlobStore, rules: list[dict], own_base: str) -> list[str]:
    """Create retrieve Tasks for ImagingStudy versions committed since the cursor; returns their ids."""
    if not rules:
        return []
    created = []
    while True:
        with repo.transaction() as uow:
            cursor = read_cursor(uow.conn)
            rows = uow.conn.execute(
                select(resource_version.c.seq, resource_version.c.res_id, resource_version.c.content)
                .where(resource_version.c.seq > cursor, resource_version.c.res_type == "ImagingStudy")
                .order_by(resource_version.c.seq).limit(BATCH)).all()
            if not rows:
                return created
            latest = {row.res_id: row for row in rows}  # only the newest version of each study counts
            for res_id, row in latest.items():
                if row.content is None:
                    continue
                priority = matching_priority(uow, orjson.loads(row.content), rules, own_base, blobstore)
                if priority:
                    task, is_new = start_retrieve(uow, res_id, priority, repo.clock())
                    if is_new:
                        created.append(task.res_id)
            uow.conn.execute(update(transfer_cursor).where(transfer_cursor.c.name == CURSOR)
                             .values(seq=rows[-1].seq))
        if created:
            log.info("auto-retrieve rules created %d Task(s): %s", len(created), ", ".join(created))


def read_cursor(conn) -> int:
    value = conn.execute(select(transfer_cursor.c.seq).where(transfer_cursor.c.name == CURSOR)).scalar()
    if value is None:
        conn.execute(transfer_cursor.insert().values(name=CURSOR, seq=0))
        return 0
    return int(value)


def matching_priority(uow, study: dict, rules: list[dict], own_base: str, blobstore: BlobStore) -> str | None:
    """The priority of the first rule the study matches, or None."""
    addresses = endpoint_addresses(uow, study, own_base)
    modalities = study_modalities(study)
    for rule in rules:
        prefix = rule["address_prefix"].rstrip("/")
        if not any(a == prefix or a.startswith(prefix + "/") for a in addresses):
            continue
        if rule["modalities"] and not modalities & set(rule["modalities"]):
            continue
        if is_already_held(study, blobstore):
            return None
        return rule["priority"]
    return None


def endpoint_addresses(uow, study: dict, own_base: str) -> set[str]:
    references = list(study.get("endpoint") or [])
    for series in study.get("series") or []:
        references += series.get("endpoint") or []
    return set(dicomweb_addresses(uow, references, own_base))


def study_modalities(study: dict) -> set[str]:
    concepts = list(study.get("modality") or []) + [s.get("modality") or {} for s in study.get("series") or []]
    return {c.get("code") for concept in concepts for c in (concept.get("coding") or []) if c.get("code")}


def is_already_held(study: dict, blobstore: BlobStore) -> bool:
    """Every instance the study lists is in the blob store (nothing to fetch)."""
    listed = {i.get("uid") for s in study.get("series") or [] for i in s.get("instance") or []}
    if not listed:
        return False
    try:
        study_uid = study_uid_of(study)
    except TaskFailure:
        return False
    return listed <= blobstore.stored_sop_uids(study_uid)
