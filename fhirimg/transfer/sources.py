"""Where to fetch a study from: the Endpoint(s) of an ImagingStudy (R5), normalised.

ImagingStudy.endpoint applies to every series unless a series has its own Endpoint of the
same connection type (R5 ImagingStudy.series.endpoint). Only active Endpoints whose
connectionType is dicom-wado-rs (or dicom-qido-rs) count, and never fhirimg's own
DICOMweb Endpoint, which a completed retrieve adds to the study. Some senders put a full
``.../studies/{uid}`` URL in Endpoint.address: it is cut back to the DICOMweb base.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from fhirimg.store import Repository

from .uids import is_valid_uid, uid_from_identifier

CONNECTION_TYPES = frozenset({"dicom-wado-rs", "dicom-qido-rs"})
DICOM_UID_SYSTEM = "urn:dicom:uid"
_STUDIES_SUFFIX = re.compile(r"/studies(/[^?#]*)?$")


class TaskFailure(Exception):
    """The Task cannot be carried out; the message becomes Task.statusReason."""


@dataclass
class SourcePlan:
    study_id: str
    study_uid: str
    base_url: str
    series_bases: dict[str, str] = field(default_factory=dict)


def plan_source(repo: Repository, task: dict, own_base: str = "") -> SourcePlan:
    """Read the Task's focus ImagingStudy and decide which DICOMweb base serves each series."""
    study_id = focus_study_id(task)
    with repo.reading() as uow:
        stored = uow.read("ImagingStudy", study_id)
        if stored is None or stored.is_deleted:
            raise TaskFailure(f"ImagingStudy/{study_id} does not exist (any more)")
        study = stored.resource
        study_uid = study_uid_of(study)
        base = first_dicomweb_address(uow, study.get("endpoint") or [], own_base)
        series_bases = {}
        for series in study.get("series") or []:
            address = first_dicomweb_address(uow, series.get("endpoint") or [], own_base)
            if address and is_valid_uid(series.get("uid")):
                series_bases[series["uid"]] = address
    if base is None:
        if not series_bases:
            raise TaskFailure(f"ImagingStudy/{study_id} has no active Endpoint of connection type "
                              "dicom-wado-rs or dicom-qido-rs")
        base = next(iter(series_bases.values()))
    return SourcePlan(study_id, study_uid, base, series_bases)


def check_retrievable(uow, study: dict, own_base: str = "") -> None:
    """Raise TaskFailure unless the study has a Study Instance UID and a DICOMweb Endpoint."""
    study_uid_of(study)
    references = list(study.get("endpoint") or [])
    for series in study.get("series") or []:
        references += series.get("endpoint") or []
    if first_dicomweb_address(uow, references, own_base) is None:
        raise TaskFailure("the ImagingStudy has no active Endpoint of connection type dicom-wado-rs or "
                          "dicom-qido-rs to retrieve from")


def focus_study_id(task: dict) -> str:
    reference = ((task.get("focus") or {}).get("reference") or "")
    kind, _, study_id = reference.partition("/")
    if kind != "ImagingStudy" or not study_id or "/" in study_id:
        raise TaskFailure(f"Task.focus {reference!r} is not a reference to an ImagingStudy")
    return study_id


def study_uid_of(study: dict) -> str:
    """The Study Instance UID from ImagingStudy.identifier (system urn:dicom:uid)."""
    for identifier in study.get("identifier") or []:
        if identifier.get("system") == DICOM_UID_SYSTEM and isinstance(identifier.get("value"), str):
            uid = uid_from_identifier(identifier["value"])
            if uid:
                return uid
    raise TaskFailure("ImagingStudy.identifier has no valid Study Instance UID (system urn:dicom:uid)")


def dicomweb_addresses(uow, references: list[dict], own_base: str) -> Iterator[str]:
    """Normalised addresses of the live DICOMweb Endpoints these references name, in order,
    leaving out this server's own DICOMweb base."""
    for reference in references:
        kind, _, endpoint_id = (reference.get("reference") or "").partition("/")
        if kind != "Endpoint" or not endpoint_id:
            continue
        stored = uow.read("Endpoint", endpoint_id)
        if stored is None or stored.is_deleted or not is_dicomweb_endpoint(stored.resource):
            continue
        address = normalise_address(stored.resource.get("address", ""))
        if address and address != normalise_address(own_base):
            yield address


def first_dicomweb_address(uow, references: list[dict], own_base: str) -> str | None:
    return next(dicomweb_addresses(uow, references, own_base), None)


def is_dicomweb_endpoint(endpoint: dict) -> bool:
    if endpoint.get("status", "active") != "active":
        return False
    codes = {coding.get("code") for concept in endpoint.get("connectionType") or []
             for coding in (concept.get("coding") or [])}
    return bool(codes & CONNECTION_TYPES)


def normalise_address(address: str) -> str:
    """``https://pacs/dicom-web/studies/1.2.3`` → ``https://pacs/dicom-web``; no trailing slash."""
    address = (address or "").strip().split("#", 1)[0].split("?", 1)[0].rstrip("/")
    return _STUDIES_SUFFIX.sub("", address)
