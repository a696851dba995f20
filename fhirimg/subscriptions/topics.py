"""The topics fhirimg ships: what each one fires on, and what a Subscription may filter by.

Topics are defined here in code, not stored: a SubscriptionTopic is part of the server's
behaviour (which changes count as an event is decided by `fires`), so a client may read and
search them but not write them. Each topic fires on one resource type; `fires` sees the
change and the version before it, so "status changed" and "images became available" are
decided on content, whichever route (REST, transaction, push, retrieval) wrote the change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..transfer.studyupdate import OWN_ENDPOINT_ID

TOPIC_BASE = "http://fhirimg.org/fhir/SubscriptionTopic"
TOPIC_DATE = "2026-12-07"
OWN_ENDPOINT = f"Endpoint/{OWN_ENDPOINT_ID}"


@dataclass(frozen=True)
class Change:
    """One committed version as the matcher sees it."""

    seq: int
    res_type: str
    res_id: str
    version: int
    method: str
    resource: dict | None  # None for a delete
    previous: dict | None  # the version before (None for a create, or a re-create after a delete)
    last_updated_ms: int

    @property
    def interaction(self) -> str:
        if self.resource is None:
            return "delete"
        return "create" if self.previous is None else "update"


@dataclass(frozen=True)
class FilterDef:
    """One `canFilterBy`: a search parameter of the topic's resource, compared by equality."""

    parameter: str
    description: str
    comparators: tuple[str, ...] = ("eq",)
    modifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    description: str
    resource: str
    interactions: tuple[str, ...]
    trigger: str  # the resourceTrigger's description: when it fires, in words
    fires: Callable[[Change], bool]
    filters: tuple[FilterDef, ...]
    fhirpath: str | None = None  # the rule as FHIRPath (%previous, %current), for readers
    includes: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        return f"{TOPIC_BASE}/{self.id}"

    def filter(self, parameter: str) -> FilterDef | None:
        return next((f for f in self.filters if f.parameter == parameter), None)

    def to_resource(self) -> dict:
        trigger = {"description": self.trigger, "resource": f"http://hl7.org/fhir/StructureDefinition/{self.resource}",
                   "supportedInteraction": list(self.interactions)}
        if self.fhirpath:
            trigger["fhirPathCriteria"] = self.fhirpath
        shape = {"resource": self.resource}
        if self.includes:
            shape["include"] = list(self.includes)
        return {
            "resourceType": "SubscriptionTopic", "id": self.id, "url": self.url, "version": "1",
            "name": "".join(part.capitalize() for part in self.id.split("-")), "title": self.title,
            "status": "active", "date": TOPIC_DATE, "publisher": "fhirimg", "description": self.description,
            "resourceTrigger": [trigger],
            "canFilterBy": [
                {"description": f.description, "resource": self.resource, "filterParameter": f.parameter,
                 **({"comparator": list(f.comparators)} if f.comparators else {}),
                 **({"modifier": list(f.modifiers)} if f.modifiers else {})} for f in self.filters],
            "notificationShape": [shape],
        }


def _written(change: Change) -> bool:
    return change.resource is not None


def _status_changed(change: Change) -> bool:
    if change.resource is None:
        return False
    return change.previous is None or change.previous.get("status") != change.resource.get("status")


def _lists_own_endpoint(study: dict | None) -> bool:
    return bool(study) and any(isinstance(e, dict) and e.get("reference") == OWN_ENDPOINT
                               for e in study.get("endpoint") or [])


def _instances(study: dict | None) -> int:
    count = (study or {}).get("numberOfInstances")
    return count if isinstance(count, int) else 0


def _images_arrived(change: Change) -> bool:
    """The study's images are held here (this server's DICOMweb Endpoint is listed, which a
    push or a completed retrieval adds) and that is news: newly listed, or more instances."""
    if not _lists_own_endpoint(change.resource):
        return False
    return not _lists_own_endpoint(change.previous) or _instances(change.resource) > _instances(change.previous)


STUDY_FILTERS = (
    FilterDef("patient", "The study's patient (Patient/[id])"),
    FilterDef("modality", "A modality in the study (system|code or code, e.g. "
                          "http://dicom.nema.org/resources/ontology/DCM|CT)"),
    FilterDef("status", "The study's status (registered | available | cancelled | ...)"),
    FilterDef("endpoint", "An Endpoint the study or a series names (Endpoint/[id])"),
    FilterDef("identifier", "The study's identifier, e.g. urn:dicom:uid|urn:oid:[StudyInstanceUID]"),
)

TOPICS: tuple[Topic, ...] = (
    Topic("imagingstudy-changed", "ImagingStudy created or updated",
          "An ImagingStudy was created or changed, by any route: REST, a transaction, replication, "
          "an image push or a retrieval.",
          "ImagingStudy", ("create", "update"), "Every new version of an ImagingStudy that is not a delete.",
          _written, STUDY_FILTERS, includes=("ImagingStudy:patient",)),
    Topic("imagingstudy-available", "ImagingStudy images available here",
          "A study's images can now be fetched from this server's DICOMweb service: its retrieval "
          "Task completed, or instances arrived by STOW-RS or C-STORE.",
          "ImagingStudy", ("create", "update"),
          "This server's DICOMweb Endpoint is newly listed in ImagingStudy.endpoint, or the study "
          "holds more instances than before while it is listed.",
          _images_arrived, STUDY_FILTERS,
          fhirpath=f"%current.endpoint.reference contains '{OWN_ENDPOINT}' and "
                   f"(%previous.empty() or %previous.endpoint.reference contains '{OWN_ENDPOINT}' = false "
                   "or %current.numberOfInstances > %previous.numberOfInstances)",
          includes=("ImagingStudy:patient",)),
    Topic("task-status", "Task status changed",
          "A Task was created or its status changed (a retrieval requested, in progress, completed, "
          "failed or cancelled).",
          "Task", ("create", "update"), "A new Task, or a new version whose status differs from the previous one.",
          _status_changed,
          (FilterDef("focus", "What the Task is about, e.g. ImagingStudy/[id]"),
           FilterDef("status", "The Task's new status"),
           FilterDef("code", "The Task's code, e.g. the retrieval code"),
           FilterDef("patient", "The Task's patient (Patient/[id])")),
          fhirpath="%previous.empty() or %previous.status != %current.status"),
    Topic("patient-changed", "Patient created or updated",
          "A Patient was created or changed (including one matched or created by an image push).",
          "Patient", ("create", "update"), "Every new version of a Patient that is not a delete.",
          _written,
          (FilterDef("_id", "The Patient's id"),
           FilterDef("identifier", "An identifier of the Patient (system|value)"))),
)

BY_URL = {topic.url: topic for topic in TOPICS}
BY_ID = {topic.id: topic for topic in TOPICS}
RESOURCE_TYPES = frozenset(topic.resource for topic in TOPICS)


def topic_for(canonical: str | None) -> Topic | None:
    """The topic a Subscription names; a canonical may carry a version (|1)."""
    if not isinstance(canonical, str):
        return None
    return BY_URL.get(canonical.split("|", 1)[0])
