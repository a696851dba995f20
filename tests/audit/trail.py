"""Reading the audit trail straight from its table, independently of the AuditEvent API."""
from __future__ import annotations

import base64
import json

from sqlalchemy import text


def all_events(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, patient, event FROM audit_event ORDER BY seq")).all()
    return [{**json.loads(row.event), "_seq": row.seq, "_patient": row.patient} for row in rows]


def request_id_of(event: dict) -> str | None:
    for entity in event.get("entity", []):
        for detail in entity.get("detail", []):
            if detail["type"]["text"] == "X-Request-Id":
                return detail["valueString"]
    return None


def events_of(engine, request_id: str) -> list[dict]:
    return [e for e in all_events(engine) if request_id_of(e) == request_id]


def code_of(event: dict) -> str:
    return event["code"]["coding"][0]["code"]


def outcome_of(event: dict) -> str:
    return event["outcome"]["code"]["code"]


def whats(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})]


def query_of(event: dict) -> str | None:
    for entity in event.get("entity", []):
        if "query" in entity:
            return base64.b64decode(entity["query"]).decode()
    return None


def details_of(event: dict) -> dict[str, str]:
    return {d["type"]["text"]: d["valueString"] for e in event.get("entity", []) for d in e.get("detail", [])}


def patient_of(event: dict) -> str | None:
    return event.get("patient", {}).get("reference")
