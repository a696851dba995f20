"""AuditEvents as they leave the server: in an export file and to a forward target.

The chain covers the event exactly as stored (chain.canonical_json), so what we add must
be removable again by anyone who wants to re-verify it, without our code:

- ``id`` = the seq and ``meta.lastUpdated`` = the recorded time (exports only);
- an extension ``CHAIN_URL`` whose valueString is ``"<seq>:<prev_hash>:<row_hash>"``;
- (forwarding) an extension ``SOURCE_URL`` whose valueIdentifier is {system: our site id,
  value: the seq}: R5 AuditEvent has no ``identifier``, and a receiver that gets a batch
  twice (at-least-once delivery) de-duplicates on this pair.

To re-verify: drop ``id``, ``meta`` and these extensions (and ``extension`` when it is then
empty), serialise with sorted keys, no whitespace, UTF-8, and check
SHA-256(prev_hash + "\\n" + seq + "\\n" + that JSON) == row_hash, each prev_hash being the
row_hash before it (``stored_event`` does the dropping).
"""
from __future__ import annotations

import json

from ..store.records import format_instant

CHAIN_URL = "https://fhirimg.org/fhir/StructureDefinition/audit-chain"
SOURCE_URL = "https://fhirimg.org/fhir/StructureDefinition/audit-source"
OURS = (CHAIN_URL, SOURCE_URL)


def chain_extension(row) -> dict:
    return {"url": CHAIN_URL, "valueString": f"{row.seq}:{row.prev_hash}:{row.row_hash}"}


def source_extension(row, site: str) -> dict:
    return {"url": SOURCE_URL, "valueIdentifier": {"system": site, "value": str(row.seq)}}


def exported_resource(row) -> dict:
    """An audit_event row as an export line: the event with its seq as id and its chain fields."""
    event = json.loads(row.event)
    return {**event, "id": str(row.seq), "meta": {"lastUpdated": format_instant(row.recorded_ms)},
            "extension": [*event.get("extension", []), chain_extension(row)]}


def forwarded_resource(row, site: str) -> dict:
    """An audit_event row as sent to an audit repository: the event, our (site, seq) and its chain fields."""
    event = json.loads(row.event)
    return {**event, "extension": [*event.get("extension", []), source_extension(row, site), chain_extension(row)]}


def stored_event(resource: dict) -> dict:
    """The event the chain hashed, back from an exported or forwarded resource."""
    event = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    kept = [e for e in event.get("extension", []) if e.get("url") not in OURS]
    event.pop("extension", None)
    if kept:
        event["extension"] = kept
    return event


def chain_fields(resource: dict) -> tuple[int, str, str]:
    """(seq, prev_hash, row_hash) from the CHAIN_URL extension."""
    value = next(e["valueString"] for e in resource.get("extension", []) if e.get("url") == CHAIN_URL)
    seq, prev, digest = value.split(":")
    return int(seq), prev, digest


def outcome_of(event: dict) -> str:
    """The event's outcome code (audit-event-outcome: 0 success, 4 minor, 8 serious failure)."""
    codings = (event.get("outcome") or {}).get("code") or {}
    return str(codings.get("code", "0"))


def local_site(engine, config: dict) -> str:
    """This server's site id (configured under [replicate], else the stored one): the
    events' observer and the system of the SOURCE_URL identifier."""
    from ..replicate.origin import site_id
    configured = ((config.get("sections") or {}).get("replicate") or {}).get("site_id")
    return site_id(engine, configured or None)
