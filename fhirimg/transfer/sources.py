"""Where to fetch a study from: the Endpoint(s) of an ImagingStudy (R5), normalised.

ImagingStudy.endpoint applies to every series unless a series has its own Endpoint of the
same connection type (R5 ImagingStudy.series.endpoint). Only active Endpoints whose
connectionType is dicom-wado-rs (or dicom-qido-rs) count, and never fhirimg's own
DICOMweb Endpoint, which a completed retrieve adds to the study. Some senders put a full
``.../studies/{uid}`` URL in Endpoint.address: it is cut back to the DICOMweb base.

A study with no DICOMweb Endpoint may come over DIMSE (issue 17): an Endpoint of connection
type ``dicom-dimse`` whose address is ``dicom://AET@host:port``. R5 binds
Endpoint.connectionType extensibly to the endpoint-connection-type code system, which has no
DIMSE code; ``dicom-dimse`` is the code IHE RO SMRT defines (system
https://profiles.ihe.net/RO/SMRT/CodeSystem/dicom-endpoint-connection-type). As for the
DICOMweb codes, the code is matched whatever its system. DICOMweb wins when a study has both.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from fhirimg.dimse.scu import InvalidDimseAddress, parse_dimse_address
from fhirimg.store import Repository

from .uids import is_valid_uid, uid_from_identifier

CONNECTION_TYPES = frozenset({"dicom-wado-rs", "dicom-qido-rs"})
DIMSE_CONNECTION_TYPE = "dicom-dimse"
DIMSE_SYSTEM = "https://profiles.ihe.net/RO/SMRT/CodeSystem/dicom-endpoint-connection-type"
NO_ENDPOINT = "no active Endpoint of connection type dicom-wado-rs, dicom-qido-rs or dicom-dimse"
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
    # DIMSE (no DICOMweb Endpoint): dicom://AET@host:port of the study, and of series with their own.
    dimse_address: str | None = None
    series_dimse: dict[str, str] = field(default_factory=dict)

    @property
    def is_dimse(self) -> bool:
        return self.dimse_address is not None


def plan_source(repo: Repository, task: dict, own_base: str = "") -> SourcePlan:
    """Read the Task's focus ImagingStudy and decide which DICOMweb base (else which DIMSE node)
    serves each series."""
    study_id = focus_study_id(task)
    with repo.reading() as uow:
        stored = uow.read("ImagingStudy", study_id)
        if stored is None or stored.is_deleted:
            raise TaskFailure(f"ImagingStudy/{study_id} does not exist (any more)")
        study = stored.resource
        study_uid = study_uid_of(study)
        base = first_dicomweb_address(uow, study.get("endpoint") or [], own_base)
        series_bases = per_series(uow, study, lambda refs: first_dicomweb_address(uow, refs, own_base))
        if base is None and not series_bases:
            return plan_dimse_source(uow, study_id, study_uid, study)
    if base is None:
        base = next(iter(series_bases.values()))
    return SourcePlan(study_id, study_uid, base, series_bases)


def plan_dimse_source(uow, study_id: str, study_uid: str, study: dict) -> SourcePlan:
    address = first_dimse_address(uow, study.get("endpoint") or [])
    series_dimse = per_series(uow, study, lambda refs: first_dimse_address(uow, refs))
    if address is None and not series_dimse:
        raise TaskFailure(f"ImagingStudy/{study_id} has {NO_ENDPOINT}")
    return SourcePlan(study_id, study_uid, "", dimse_address=address or next(iter(series_dimse.values())),
                      series_dimse=series_dimse)


def per_series(uow, study: dict, first_address) -> dict[str, str]:
    """Series UID -> the address of the series' own Endpoint, for series that have one."""
    addresses = {}
    for series in study.get("series") or []:
        address = first_address(series.get("endpoint") or [])
        if address and is_valid_uid(series.get("uid")):
            addresses[series["uid"]] = address
    return addresses


def check_retrievable(uow, study: dict, own_base: str = "") -> None:
    """Raise TaskFailure unless the study has a Study Instance UID and a DICOMweb or DIMSE Endpoint."""
    study_uid_of(study)
    references = list(study.get("endpoint") or [])
    for series in study.get("series") or []:
        references += series.get("endpoint") or []
    if first_dicomweb_address(uow, references, own_base) is None and first_dimse_address(uow, references) is None:
        raise TaskFailure(f"the ImagingStudy has {NO_ENDPOINT} to retrieve from")


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


def live_endpoints(uow, references: list[dict], kind_of) -> Iterator[tuple[str, dict]]:
    """(id, resource) of the stored, undeleted Endpoints these references name, in order,
    that ``kind_of`` accepts."""
    for reference in references:
        kind, _, endpoint_id = (reference.get("reference") or "").partition("/")
        if kind != "Endpoint" or not endpoint_id:
            continue
        stored = uow.read("Endpoint", endpoint_id)
        if stored is not None and not stored.is_deleted and kind_of(stored.resource):
            yield endpoint_id, stored.resource


def dicomweb_addresses(uow, references: list[dict], own_base: str) -> Iterator[str]:
    """Normalised addresses of the live DICOMweb Endpoints these references name, in order,
    leaving out this server's own DICOMweb base."""
    for _, endpoint in live_endpoints(uow, references, is_dicomweb_endpoint):
        address = normalise_address(endpoint.get("address", ""))
        if address and address != normalise_address(own_base):
            yield address


def first_dicomweb_address(uow, references: list[dict], own_base: str) -> str | None:
    return next(dicomweb_addresses(uow, references, own_base), None)


def is_dicomweb_endpoint(endpoint: dict) -> bool:
    return bool(connection_codes(endpoint) & CONNECTION_TYPES)


def is_dimse_endpoint(endpoint: dict) -> bool:
    return DIMSE_CONNECTION_TYPE in connection_codes(endpoint)


def connection_codes(endpoint: dict) -> set:
    """The connectionType codes of an active Endpoint (none when it is not active)."""
    if endpoint.get("status", "active") != "active":
        return set()
    return {coding.get("code") for concept in endpoint.get("connectionType") or []
            for coding in (concept.get("coding") or [])}


def first_dimse_address(uow, references: list[dict]) -> str | None:
    """The ``dicom://AET@host:port`` of the first live dicom-dimse Endpoint these references name.

    An address that does not parse fails the Task (and $retrieve, with 422) and says which
    Endpoint: skipping it would fetch from the next one without anyone knowing why.
    """
    for endpoint_id, endpoint in live_endpoints(uow, references, is_dimse_endpoint):
        try:
            return str(parse_dimse_address(endpoint.get("address", "")))
        except InvalidDimseAddress as exc:
            raise TaskFailure(f"Endpoint/{endpoint_id} (dicom-dimse): address {exc}") from None
    return None


def normalise_address(address: str) -> str:
    """``https://pacs/dicom-web/studies/1.2.3`` → ``https://pacs/dicom-web``; no trailing slash."""
    address = (address or "").strip().split("#", 1)[0].split("?", 1)[0].rstrip("/")
    return _STUDIES_SUFFIX.sub("", address)
