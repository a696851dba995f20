"""Search values of an AuditEvent (the R5 AuditEvent search parameters): written with it on
PostgreSQL, folded in behind the chain on SQLite (audit/fold.py).

One row per value: a token as (system, code) - ``code`` alone finds any system, ``system|code``
one - a reference as ``Type/id`` with no system (an entity that names a version,
``Type/id/_history/n``, is found by both forms), an identifier as (its system, its value).
Values every event of this site shares (the server agent, its type) are not indexed.
"""
from __future__ import annotations

ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
MAX_VALUE = 256
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SERVER_TYPE = "110152"  # DCM Destination Role ID: this server, named by source.observer


def tokens(codings) -> list[tuple[str, str]]:
    return [(coding.get("system", ""), coding["code"]) for coding in codings or []
            if isinstance(coding, dict) and coding.get("code")]


def concept_tokens(concepts) -> list[tuple[str, str]]:
    return [t for concept in concepts or [] for t in tokens((concept or {}).get("coding"))]


def reference_values(reference) -> list[tuple[str | None, str]]:
    """(None, ``Type/id``) of a Reference (and of the version it names), (system, value) of its identifier."""
    if not isinstance(reference, dict):
        return []
    out: list[tuple[str | None, str]] = []
    text = reference.get("reference")
    if isinstance(text, str) and text:
        out.append((None, text))
        if "/_history/" in text:
            out.append((None, text.split("/_history/", 1)[0]))
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        out.append((identifier.get("system", ""), identifier["value"]))
    return out


def is_server(agent: dict) -> bool:
    return any(code == SERVER_TYPE for _, code in tokens((agent.get("type") or {}).get("coding")))


def index_values(event: dict) -> list[tuple[str, str | None, str]]:
    """(param, system, value) rows of one event, without duplicates."""
    pairs: list[tuple[str, tuple]] = []
    if event.get("action"):
        pairs.append(("action", (ACTION_SYSTEM, event["action"])))
    pairs += [("category", t) for t in concept_tokens(event.get("category"))]
    pairs += [("code", t) for t in tokens((event.get("code") or {}).get("coding"))]
    pairs += [("outcome", t) for t in tokens([(event.get("outcome") or {}).get("code")])]
    pairs += [("patient", v) for v in reference_values(event.get("patient"))]
    pairs += [("purpose", t) for t in concept_tokens(event.get("authorization"))]
    pairs += [("source", v) for v in reference_values((event.get("source") or {}).get("observer"))]
    for agent in event.get("agent") or []:
        if is_server(agent):
            continue
        pairs += [("agent", v) for v in reference_values(agent.get("who"))]
        pairs += [("agent-role", t) for t in concept_tokens(agent.get("role"))]
        pairs += [("policy", (None, p)) for p in agent.get("policy") or [] if isinstance(p, str)]
        pairs += [("purpose", t) for t in concept_tokens(agent.get("authorization"))]
    for entity in event.get("entity") or []:
        pairs += [("entity", v) for v in reference_values(entity.get("what"))]
        roles = tokens((entity.get("role") or {}).get("coding"))
        pairs += [("entity-role", t) for t in roles]
        if any(code == "1" for _, code in roles):
            # A patient entity (the one a study was moved away from): found by patient= too.
            pairs += [("patient", v) for v in reference_values(entity.get("what"))]
    seen: set[tuple] = set()
    out = []
    for param, (system, value) in pairs:
        row = (param, system, value[:MAX_VALUE])
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out
