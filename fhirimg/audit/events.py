"""BALP-shaped AuditEvents in FHIR R5 (IHE Basic Audit Log Patterns is written for R4;
this is fhirimg's port of it).

R4 -> R5, as BALP's profiles need it: ``type``/``subtype`` become ``category``
(audit-event-type#rest) and ``code`` (restful-interaction#read ...); ``outcome`` becomes
``outcome.code`` (audit-event-outcome 0/4/8); ``period`` ``occurredDateTime``;
``agent.network`` ``agent.networkString``; entities lose ``type``, so they are told apart by
``role`` (object-role 1 Patient, 4 Domain Resource, 24 Query) and the X-Request-Id travels as
an ``entity.detail``. The token itself, and capability URLs, never appear: the client is
named by its client_id, the token by its ``jti`` (BALP's Minimal OAuth profile).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..store.records import format_instant

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
JTI_PREFIX = "urn:ietf:params:oauth:jti:"

# restful-interaction code -> AuditEvent.action (C R U D E)
ACTIONS = {"login": "E", "create": "C", "read": "R", "vread": "R", "history-instance": "R", "update": "U", "patch": "U",
           "delete": "D", "search-type": "E", "search-system": "E", "history-type": "E", "history-system": "E",
           "operation": "E", "transaction": "E", "batch": "E"}
QUERIES = {"search-type", "search-system", "history-type", "history-system"}


@dataclass(frozen=True)
class Actor:
    """Who acts: the client (and its user) over the network, at this server (the observer).
    Requests make one from their principal; workers and replication act as the server."""

    client_id: str
    site: str
    network: str | None = None
    request_id: str | None = None
    token_id: str | None = None
    user: str | None = None

    def act(self, interaction: str, recorded_ms: int, **details) -> "Act":
        return Act(interaction, recorded_ms, self.client_id, self.site, network=self.network,
                   request_id=self.request_id, token_id=self.token_id, user=self.user, **details)


@dataclass
class Act:
    """One auditable act, as the request saw it."""

    interaction: str  # a restful-interaction code (read, search-type, operation, ...)
    recorded_ms: int
    client_id: str
    site: str  # this server, as AuditEvent.source.observer
    status: int = 200
    network: str | None = None  # the client's address
    request_id: str | None = None
    token_id: str | None = None
    user: str | None = None  # fhirUser, when the token names one
    resources: list[str] = field(default_factory=list)  # "Type/id" the act was about
    query: str | None = None  # the raw query string of a search (kept as base64, as BALP says)
    details: dict[str, str] = field(default_factory=dict)  # e.g. DICOM UIDs of a WADO read
    reason: str | None = None  # why it failed
    other_patients: tuple[str, ...] = ()  # patients concerned besides the event's own (as entities)


def outcome_code(status: int) -> str:
    """0 success; 4 minor failure (a refused or bad request); 8 serious failure (the server's)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def audit_events(act: Act, patients: list[str | None]) -> list[dict]:
    """The act's AuditEvents: one per patient it concerns (BALP PatientQuery/PatientRead), or
    one without a patient. Each names its patient in ``patient`` and as an entity."""
    return [event for event, _, _ in event_rows(act, patients)]


def event_rows(act: Act, patients: list[str | None]) -> list[tuple[dict, str | None, int]]:
    """The act's events as rows for the chain: (event, its patient, recorded ms)."""
    return [(event, patient, act.recorded_ms) for event, patient in
            ((audit_event(act, p), p) for p in (sorted({p for p in patients if p}) or [None]))]


def audit_event(act: Act, patient: str | None) -> dict:
    category, code = classification(act.interaction)
    instant = format_instant(act.recorded_ms)
    event = {
        "resourceType": "AuditEvent",
        "category": [{"coding": [category]}],
        "code": {"coding": [code]},
        "action": ACTIONS.get(act.interaction, "E"),
        "occurredDateTime": instant,
        "recorded": instant,
        "outcome": outcome(act),
        "agent": agents(act),
        "source": {"observer": {"identifier": {"value": act.site}},
                   "type": [{"coding": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]}]},
        "entity": entities(act, patient),
    }
    if patient:
        event["patient"] = {"reference": f"Patient/{patient}"}
    return event


def classification(interaction: str) -> tuple[dict, dict]:
    """(category, code): a RESTful interaction, or (token issuance) a DICOM User Authentication login."""
    if interaction == "login":
        return ({"system": DCM, "code": "110114", "display": "User Authentication"},
                {"system": DCM, "code": "110122", "display": "Login"})
    return ({"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
            {"system": RESTFUL, "code": interaction})


def outcome(act: Act) -> dict:
    out = {"code": {"system": OUTCOME, "code": outcome_code(act.status)}}
    if act.reason and act.status >= 400:
        out["detail"] = [{"text": f"{act.status}: {act.reason}"[:500]}]
    return out


def agents(act: Act) -> list[dict]:
    client = {"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
              "who": {"identifier": {"value": act.client_id}}, "requestor": act.user is None}
    if act.network:
        client["networkString"] = act.network
    if act.token_id:
        client["policy"] = [JTI_PREFIX + str(act.token_id)]
    server = {"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
              "who": {"identifier": {"value": act.site}}, "requestor": False}
    out = [client, server]
    if act.user:
        out.append({"type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
                    "who": {"reference": act.user} if "/" in act.user else {"display": act.user}, "requestor": True})
    return out


def entities(act: Act, patient: str | None) -> list[dict]:
    out = []
    if patient:
        out.append({"what": {"reference": f"Patient/{patient}"}, "role": role("1", "Patient")})
    for reference in act.resources:
        if reference != f"Patient/{patient}":
            out.append({"what": {"reference": reference}, "role": role("4", "Domain Resource")})
    for other in act.other_patients:  # e.g. the patient an updated study was moved away from
        if other != patient:
            out.append({"what": {"reference": f"Patient/{other}"}, "role": role("1", "Patient")})
    if act.query is not None and act.interaction in QUERIES | {"operation"}:
        out.append({"role": role("24", "Query"), "query": base64.b64encode(act.query.encode()).decode("ascii")})
    detail = [{"type": {"text": name}, "valueString": value} for name, value in act.details.items()]
    if act.request_id:
        detail.append({"type": {"text": "X-Request-Id"}, "valueString": act.request_id})
    if detail:
        out.append({"what": {"display": "request"}, "detail": detail})
    return out


def role(code: str, display: str) -> dict:
    return {"coding": [{"system": OBJECT_ROLE, "code": code, "display": display}]}
