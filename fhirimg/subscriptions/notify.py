"""Notification Bundles (R5 ``subscription-notification``), shaped by the payload level and by
what the subscriber may read at the moment they are built.

The first entry is always a SubscriptionStatus. ``eventsSinceSubscriptionStart`` and
``eventNumber`` are integer64, which R5 JSON writes as strings. Payloads:

* ``empty``: numbers and timestamps only, no focus (nothing about any patient leaves);
* ``id-only``: the focus reference, and an entry with its fullUrl;
* ``full-resource``: the focus version the event is about, as it was then.

An event whose focus the subscriber may no longer read goes out as ``empty``: its number
is kept (a client must never see a gap it cannot explain), its content is not.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
from sqlalchemy import select

from ..store.records import format_instant
from ..store.repository import with_server_meta
from ..store.schema import resource_version
from .grants import may_read
from .validate import content_of


@dataclass(frozen=True)
class Event:
    number: int
    seq: int
    res_type: str
    res_id: str
    version: int
    occurred_ms: int


def status_resource(sub_id: str, subscription: dict, events_since: int, kind: str, events: list[dict] = (),
                    error: str | None = None, status: str | None = None) -> dict:
    out = {"resourceType": "SubscriptionStatus", "status": status or subscription.get("status") or "active",
           "type": kind, "eventsSinceSubscriptionStart": str(events_since)}
    if events:
        out["notificationEvent"] = list(events)
    out["subscription"] = {"reference": f"Subscription/{sub_id}"}
    if subscription.get("topic"):
        out["topic"] = subscription["topic"]
    if error:
        out["error"] = [{"text": error[:500]}]
    return out


def bundle(status: dict, entries: list[dict] = (), now_ms: int | None = None) -> dict:
    out = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "subscription-notification"}
    if now_ms is not None:
        out["timestamp"] = format_instant(now_ms)
    out["entry"] = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status}, *entries]
    return out


def handshake(sub_id: str, subscription: dict, events_since: int, now_ms: int) -> dict:
    return bundle(status_resource(sub_id, subscription, events_since, "handshake"), now_ms=now_ms)


def heartbeat(sub_id: str, subscription: dict, events_since: int, now_ms: int, error: str | None = None) -> dict:
    return bundle(status_resource(sub_id, subscription, events_since, "heartbeat", error=error), now_ms=now_ms)


def event_notification(conn, sub_id: str, subscription: dict, principal, events_since: int, events: list[Event],
                       base: str, now_ms: int, kind: str = "event-notification", content: str | None = None) -> dict:
    """A notification of `events` (in order), at the subscription's payload level or `content`."""
    level = content or content_of(subscription)
    versions, methods = load_versions(conn, events) if level != "empty" else ({}, {})
    notified, entries = [], []
    for event in events:
        item = {"eventNumber": str(event.number), "timestamp": format_instant(event.occurred_ms)}
        resource = versions.get((event.res_type, event.res_id, event.version))
        shown = level != "empty" and may_read(conn, principal, event.res_type, event.res_id,
                                              resource)
        if shown:
            reference = f"{event.res_type}/{event.res_id}/_history/{event.version}"
            item["focus"] = {"reference": reference}
            entry = {"fullUrl": f"{base}/{event.res_type}/{event.res_id}"}
            if level == "full-resource" and resource is not None:
                entry["resource"] = with_server_meta(resource, event.version, event.occurred_ms)
            # What happened to it, as in a history Bundle (and bdl-5: an entry without a
            # resource has a request or a response).
            entry["request"] = {"method": methods.get(event.seq, "PUT"),
                                "url": f"{event.res_type}/{event.res_id}"}
            entries.append(entry)
        notified.append(item)
    return bundle(status_resource(sub_id, subscription, events_since, kind, notified), entries, now_ms)


def load_versions(conn, events: list[Event]) -> tuple[dict, dict]:
    """The events' versions ({(type, id, version): content}) and their methods ({seq: method})."""
    rv = resource_version
    seqs = [e.seq for e in events]
    out, methods = {}, {}
    for row in conn.execute(select(rv.c.seq, rv.c.res_type, rv.c.res_id, rv.c.version, rv.c.method, rv.c.content)
                            .where(rv.c.seq.in_(seqs))):
        out[(row.res_type, row.res_id, row.version)] = orjson.loads(row.content) if row.content else None
        methods[row.seq] = "PUT" if row.method == "PATCH" else row.method
    return out, methods

