"""Write events, appended in the transaction that writes the versions they describe: a
crash leaves both or neither, and every stored version has exactly one write event.

Called by the unit of work at commit (store/repository.py), for API requests, Bundles,
workers and replication alike; the actor says who (a request's client, or this server).
"""
from __future__ import annotations

from ..store.records import StoredVersion
from .chain import append_events
from .events import Actor, event_rows

WRITE_STATUS = {"create": 201}


def interaction_of(stored: StoredVersion) -> str:
    if stored.created:
        return "create"
    return {"PATCH": "patch", "DELETE": "delete"}.get(stored.method, "update")


def patient_of(res_type: str, res_id: str, resource: dict | None) -> str | None:
    """The patient whose record a resource is part of (the compartment's direct links)."""
    if resource is None:
        return None
    if res_type == "Patient":
        return res_id
    field = {"ImagingStudy": "subject", "Task": "for"}.get(res_type)
    reference = resource.get(field) if field else None
    text = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(text, str) and text.startswith("Patient/") and "/" not in text[8:]:
        return text[8:]
    return None


def write_events(actor: Actor, versions: list[StoredVersion], previous: dict) -> list[tuple[dict, str | None, int]]:
    """One event per version: the version as entity, its patient (after the write, or before
    it for a delete) as the event's patient; a patient it was moved away from as an entity."""
    rows = []
    for stored in versions:
        before = previous.get((stored.res_type, stored.res_id))
        patient = patient_of(stored.res_type, stored.res_id, stored.resource)
        earlier = patient_of(stored.res_type, stored.res_id, before)
        if patient is None:
            patient, earlier = earlier, None
        interaction = interaction_of(stored)
        act = actor.act(interaction, stored.last_updated_ms, status=WRITE_STATUS.get(interaction, 200),
                        resources=[stored.location], other_patients=(earlier,) if earlier else ())
        rows += event_rows(act, [patient])
    return rows


def audit_writes(conn, actor: Actor, versions: list[StoredVersion], previous: dict) -> None:
    append_events(conn, write_events(actor, versions, previous))
