"""Search values of an AuditEvent (the R5 AuditEvent search parameters), written with it.

Tokens are kept twice, ``system|code`` and ``*|code``, so that ``code`` alone (any system)
and ``system|code`` are both one indexed probe; references as ``Type/id`` (an entity that
names a version, ``Type/id/_history/n``, is found by both forms).
"""
from __future__ import annotations

ANY_SYSTEM = "*"
ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
MAX_VALUE = 256


def tokens(codings) -> list[str]:
    out = []
    for coding in codings or []:
        if isinstance(coding, dict) and coding.get("code"):
            out += [f"{coding.get('system', '')}|{coding['code']}", f"{ANY_SYSTEM}|{coding['code']}"]
    return out


def concept_tokens(concepts) -> list[str]:
    return [t for concept in concepts or [] for t in tokens((concept or {}).get("coding"))]


def reference_values(reference) -> list[str]:
    """``Type/id`` of a Reference (and ``Type/id/_history/n`` as given), its identifier value."""
    if not isinstance(reference, dict):
        return []
    out = []
    text = reference.get("reference")
    if isinstance(text, str) and text:
        out.append(text)
        if "/_history/" in text:
            out.append(text.split("/_history/", 1)[0])
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        out.append(f"{identifier.get('system', '')}|{identifier['value']}")
        out.append(f"{ANY_SYSTEM}|{identifier['value']}")
    return out


def index_values(event: dict) -> list[tuple[str, str]]:
    """(param, value) pairs of one event, without duplicates."""
    action = [{"system": ACTION_SYSTEM, "code": event["action"]}] if event.get("action") else []
    pairs: list[tuple[str, str]] = [("action", t) for t in tokens(action)]
    pairs += [("category", t) for t in concept_tokens(event.get("category"))]
    pairs += [("code", t) for t in tokens((event.get("code") or {}).get("coding"))]
    pairs += [("outcome", t) for t in tokens([(event.get("outcome") or {}).get("code")])]
    pairs += [("patient", v) for v in reference_values(event.get("patient"))]
    pairs += [("purpose", t) for t in concept_tokens(event.get("authorization"))]
    source = (event.get("source") or {}).get("observer") or {}
    pairs += [("source", v) for v in reference_values(source)]
    if source.get("display"):
        pairs.append(("source", source["display"]))
    for agent in event.get("agent") or []:
        pairs += [("agent", v) for v in reference_values(agent.get("who"))]
        pairs += [("agent-role", t) for t in concept_tokens(agent.get("role"))]
        pairs += [("agent-type", t) for t in tokens((agent.get("type") or {}).get("coding"))]
        pairs += [("policy", p) for p in agent.get("policy") or [] if isinstance(p, str)]
        pairs += [("purpose", t) for t in concept_tokens(agent.get("authorization"))]
    for entity in event.get("entity") or []:
        pairs += [("entity", v) for v in reference_values(entity.get("what"))]
        if any(c.get("code") == "1" for c in (entity.get("role") or {}).get("coding") or []):
            # A patient entity (the one a study was moved away from): found by patient= too.
            pairs += [("patient", v) for v in reference_values(entity.get("what"))]
        pairs += [("entity-role", t) for t in tokens((entity.get("role") or {}).get("coding"))]
    seen: set[tuple[str, str]] = set()
    out = []
    for param, value in pairs:
        value = value[:MAX_VALUE]
        if (param, value) not in seen:
            seen.add((param, value))
            out.append((param, value))
    return out
