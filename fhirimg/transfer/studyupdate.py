"""After a complete transfer: the ImagingStudy is made to match the source, and points at us.

The new version lists exactly the series and instances the source has (steps 1 and 2),
keeps what the sender wrote about series we also know (performer, bodySite, ...), and
gains an Endpoint (connectionType dicom-wado-rs) for fhirimg's own DICOMweb base, from
which any DICOMweb client can now pull the study.
"""
from __future__ import annotations

from fhirimg.errors import Conflict
from fhirimg.resources import validate_resource
from fhirimg.store import Repository

from .qido import SourceSeries, SourceStudy

DCM = "http://dicom.nema.org/resources/ontology/DCM"
CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
OWN_ENDPOINT_ID = "fhirimg-dicomweb"
# SMART Imaging Access: the same bearer token that found the study fetches its images here.
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


def own_endpoint_resource(base: str) -> dict:
    return {
        "resourceType": "Endpoint",
        "id": OWN_ENDPOINT_ID,
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}],
        "status": "active",
        "connectionType": [{"coding": [{"system": CONNECTION_TYPE_SYSTEM, "code": "dicom-wado-rs"}]},
                           {"coding": [{"system": CONNECTION_TYPE_SYSTEM, "code": "dicom-qido-rs"}]}],
        "name": "fhirimg DICOMweb",
        "payload": [{"mimeType": ["application/dicom"]}],
        "address": base.rstrip("/"),
    }


def ensure_own_endpoint(repo: Repository, base: str) -> str:
    """The Endpoint for our own DICOMweb base (fixed id; an identical update writes nothing)."""
    resource = own_endpoint_resource(base)
    validate_resource(resource, "Endpoint")
    for _ in range(3):
        try:
            with repo.transaction() as uow:
                uow.update("Endpoint", OWN_ENDPOINT_ID, resource)
            break
        except Conflict:
            continue  # created concurrently by another worker: the next round is a no-op
    return f"Endpoint/{OWN_ENDPOINT_ID}"


def reconciled_imaging_study(current: dict, source: SourceStudy, endpoint_ref: str | None) -> dict:
    """A new ImagingStudy body whose series and instances are the source's."""
    updated = {k: v for k, v in current.items() if k != "meta"}
    known = {s.get("uid"): s for s in current.get("series") or []}
    ordered = sorted(source.series, key=lambda s: (s.number is None, s.number or 0, s.series_uid))
    updated["series"] = [series_element(s, known.get(s.series_uid, {})) for s in ordered]
    updated["numberOfSeries"] = len(ordered)
    updated["numberOfInstances"] = source.instance_count
    modalities = sorted({s.modality for s in ordered if s.modality})
    if modalities:
        updated["modality"] = [{"coding": [{"system": DCM, "code": m}]} for m in modalities]
    if endpoint_ref:
        endpoints = list(current.get("endpoint") or [])
        if not any(e.get("reference") == endpoint_ref for e in endpoints):
            endpoints.append({"reference": endpoint_ref})
        updated["endpoint"] = endpoints
    return updated


def series_element(series: SourceSeries, known: dict) -> dict:
    element = {k: v for k, v in known.items() if k not in ("uid", "number", "modality", "description",
                                                           "numberOfInstances", "instance")}
    element["uid"] = series.series_uid
    if series.number is not None and 0 <= series.number < 2**31:
        element["number"] = series.number
    element["modality"] = {"coding": [{"system": DCM, "code": series.modality or "OT"}]}
    if series.description:
        element["description"] = series.description
    element["numberOfInstances"] = len(series.instances)
    instances = sorted(series.instances.values(), key=lambda i: (i.number is None, i.number or 0, i.sop_uid))
    element["instance"] = [instance_element(i) for i in instances]
    return element


def instance_element(instance) -> dict:
    element = {"uid": instance.sop_uid,
               "sopClass": {"system": "urn:ietf:rfc:3986",
                            "code": f"urn:oid:{instance.sop_class_uid or '1.2.840.10008.5.1.4.1.1.7'}"}}
    if instance.number is not None and 0 <= instance.number < 2**31:
        element["number"] = instance.number
    return element
