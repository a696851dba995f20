"""Refusals of the listener in the audit trail: a rejected association, a refused instance.

Each is a failed ``create`` AuditEvent (outcome 4, minor failure: the peer's request was
refused) in a transaction of its own, naming the calling node as the agent (``dicom:<AE>``,
its address) and the reason with the DICOM status. What is stored is audited by the ingest,
one event per study and group (push/ingest.py).
"""
from __future__ import annotations

import logging
import time

from ..audit.chain import append_events
from ..audit.events import Actor, event_rows
from ..store.engine import WRITE_OPTION

log = logging.getLogger("fhirimg.dimse")

# DICOM status -> the HTTP-like status the audit outcome is derived from (4xx: refused).
AUDIT_STATUS = {0xA700: 413, 0x0111: 409, 0x0122: 415, 0xA900: 422, 0xC000: 400, 0x0110: 500}
ASSOCIATION_REJECTED = 403


def actor_of(calling_ae: str, site: str, address: str | None) -> Actor:
    """The calling node as the audit trail names it: ``dicom:<AE title>`` from its address."""
    return Actor(f"dicom:{calling_ae.strip()}", site, network=address)


def record_refusal(engine, actor: Actor, status: int, reason: str, details: dict[str, str]) -> None:
    """Append one failed create event; an audit trail that cannot be written is logged, not
    raised: the refusal stands either way, and nothing was stored to be accounted for."""
    act = actor.act("create", time.time_ns() // 1_000_000, status=status, reason=reason,
                    details={k: v for k, v in details.items() if v})
    try:
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            append_events(conn, event_rows(act, [None]))
    except Exception:  # a database outage must not take the listener down
        log.exception("dimse: could not record a refusal in the audit trail (%s)", reason)


def instance_refused(engine, actor: Actor, code: int, reason: str, sop_uid: str = "",
                     sop_class_uid: str = "") -> None:
    log.warning("C-STORE from %s refused with %04X: %s", actor.client_id, code, reason)
    record_refusal(engine, actor, AUDIT_STATUS.get(code, 400), f"C-STORE status {code:04X}: {reason}",
                   {"service": "C-STORE", "SOPInstanceUID": sop_uid, "SOPClassUID": sop_class_uid})


def association_rejected(engine, actor: Actor, reason: str) -> None:
    log.warning("association from %s (%s) rejected: %s", actor.client_id, actor.network, reason)
    record_refusal(engine, actor, ASSOCIATION_REJECTED, f"A-ASSOCIATE-RJ: {reason}", {"service": "DIMSE association"})
