"""Push: send local changes after the link's cursor to a destination, in order.

Changes are read from the change sequence up to the visibility watermark and sent as
transaction Bundles (PUT by id, DELETE). A batch ends before a resource would appear a
second time (a transaction may not touch one resource twice), so every version reaches
the destination. The cursor (the last local seq sent) advances only after the
destination answered the batch with success. Changes whose origin is the destination
are never sent back to it.

A destination that has no transaction endpoint (404/405/501 on POST [base]) gets the
same changes one request at a time; a batch the destination rejects as a whole (4xx) is
re-sent one entry at a time so that one bad entry is recorded and passed over instead
of stopping the link.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..history import visible_watermark
from ..resources import REPLICATED_BY_DEFAULT
from ..store.repository import Repository, row_to_version, strip_server_meta
from ..store.schema import resource_version
from .client import PeerClient, PeerError
from .links import LinkState, advance, claim_cursor, load_state, record_error, record_event, writing
from .origin import origin_extension
from .schema import change_origin
from .settings import Link

log = logging.getLogger("fhirimg.replicate")
NO_TRANSACTIONS = frozenset({404, 405, 501})


@dataclass
class PushReport:
    batches: int = 0
    sent: int = 0
    skipped: int = 0
    rejected: int = 0
    caught_up: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass
class OutgoingChange:
    seq: int
    res_type: str
    res_id: str
    version: int
    method: str
    resource: dict | None
    origin: str | None
    last_updated_ms: int


def read_changes(conn: Connection, after: int, types: list[str], limit: int) -> tuple[list[OutgoingChange], int]:
    """Local changes after `after` (oldest first) up to the watermark, and that watermark."""
    watermark, _ = visible_watermark(conn)
    rv = resource_version
    stmt = (select(rv, change_origin.c.origin).select_from(rv.outerjoin(change_origin, change_origin.c.seq == rv.c.seq))
            .where(rv.c.seq > after, rv.c.seq <= watermark).order_by(rv.c.seq).limit(limit))
    stmt = stmt.where(rv.c.res_type.in_(types or REPLICATED_BY_DEFAULT))
    out = []
    for row in conn.execute(stmt):
        v = row_to_version(row)
        out.append(OutgoingChange(v.seq, v.res_type, v.res_id, v.version, v.method, v.resource, row.origin,
                                  v.last_updated_ms))
    return out, watermark


def cut_batch(changes: list[OutgoingChange]) -> list[OutgoingChange]:
    """The longest prefix in which no resource appears twice (http.html#trules)."""
    seen, batch = set(), []
    for change in changes:
        key = (change.res_type, change.res_id)
        if key in seen:
            break
        seen.add(key)
        batch.append(change)
    return batch


def transaction_bundle(changes: list[OutgoingChange], base: str, own_site: str | None = None) -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [bundle_entry(c, base, own_site) for c in changes]}


def bundle_entry(change: OutgoingChange, base: str, own_site: str | None = None) -> dict:
    """PUT or DELETE by id, marked with the site that first wrote the change (this one unless
    it came from elsewhere), so the destination never pushes it back there."""
    path = f"{change.res_type}/{change.res_id}"
    origin = change.origin or own_site
    marks = {"extension": [origin_extension(origin)]} if origin else {}
    if change.resource is None:
        return {**marks, "request": {"method": "DELETE", "url": path}}
    return {**marks, "fullUrl": f"{base}/{path}", "resource": strip_server_meta(change.resource),
            "request": {"method": "PUT", "url": path}}


def push_once(repo: Repository, client: PeerClient, link: Link, own_site: str, batch_size: int = 200,
              clock: Callable[[], float] = time.time, max_batches: int | None = None) -> PushReport:
    report = PushReport()
    state = load_state(repo.engine, link, int(clock() * 1000))
    dest_site = state.peer_site or learn_destination_site(client)
    transactions = True
    while max_batches is None or report.batches < max_batches:
        after = int(state.cursor or 0)
        with repo.engine.connect() as conn:
            pending, watermark = read_changes(conn, after, link.types, batch_size)
        if not pending:
            mark_caught_up(repo, state, watermark, clock)
            report.caught_up = True
            break
        batch = cut_batch(pending)
        outgoing = [c for c in batch if not dest_site or (c.origin or own_site) != dest_site]
        rejected: list[tuple[OutgoingChange, str]] = []
        if outgoing:
            transactions, rejected = send_batch(client, outgoing, transactions, own_site)
        finish_batch(repo, link, state, batch, outgoing, rejected, dest_site or client.peer_site, watermark, clock)
        report.batches += 1
        report.sent += len(outgoing) - len(rejected)
        report.skipped += len(batch) - len(outgoing)
        report.rejected += len(rejected)
    return report


def send_batch(client: PeerClient, changes: list[OutgoingChange], transactions: bool, own_site: str | None = None):
    """Send one batch; returns (destination takes transactions, entries it rejected).
    Single requests (a destination without transactions) cannot carry the change's origin."""
    if transactions:
        try:
            answer = client.post_bundle(transaction_bundle(changes, client.base, own_site))
            check_transaction_response(answer, len(changes))
            return True, []
        except PeerError as exc:
            if exc.retryable:
                raise
            if exc.status not in NO_TRANSACTIONS and not (exc.status and 400 <= exc.status < 500):
                raise
            if exc.status in (401, 403):
                raise
            transactions = exc.status not in NO_TRANSACTIONS
            log.info("push to %s: %s; sending the batch one entry at a time", client.base, exc)
    return transactions, send_one_by_one(client, changes)


def send_one_by_one(client: PeerClient, changes: list[OutgoingChange]) -> list[tuple[OutgoingChange, str]]:
    rejected = []
    for change in changes:
        entry = bundle_entry(change, client.base)
        response = client.send_entry(entry["request"]["method"], entry["request"]["url"], entry.get("resource"))
        try:
            if response.status_code in (401, 403):
                raise PeerError(f"{client.base} refused the credentials ({response.status_code})",
                                response.status_code, retryable=False)
            if response.status_code >= 400 and not (change.resource is None and response.status_code in (404, 410)):
                rejected.append((change, f"{response.status_code}: {response.text[:500]}"))
        finally:
            response.close()
    return rejected


def check_transaction_response(answer, count: int) -> None:
    if not isinstance(answer, dict) or answer.get("type") != "transaction-response":
        raise PeerError("the destination did not answer with a transaction-response Bundle", retryable=True)
    entries = answer.get("entry") or []
    if len(entries) != count:
        raise PeerError(f"the transaction-response has {len(entries)} entries for {count} sent", retryable=True)


def finish_batch(repo: Repository, link: Link, state: LinkState, batch, outgoing, rejected, dest_site,
                 watermark: int, clock) -> None:
    now_ms = int(clock() * 1000)
    with writing(repo.engine) as conn:
        claim_cursor(conn, link.name, state.cursor, now_ms)
        for change, why in rejected:
            detail = f"{change.res_type}/{change.res_id} version {change.version} refused by {link.url}: {why}"
            log.error("replication link %s: %s", link.name, detail)
            record_event(conn, link.name, "rejected", detail, now_ms, change.res_type, change.res_id, change.version)
        extra = {"peer_site": dest_site} if dest_site else {}
        advance(conn, state, str(batch[-1].seq), now_ms, applied=len(outgoing) - len(rejected),
                skipped=len(batch) - len(outgoing), rejected=len(rejected), position_seq=batch[-1].seq,
                source_seq=watermark, **extra)


def mark_caught_up(repo: Repository, state: LinkState, watermark: int, clock) -> None:
    from .links import set_fields
    set_fields(repo.engine, state.name, caught_up_ms=int(clock() * 1000), source_seq=watermark,
               last_success_ms=int(clock() * 1000), last_error=None, last_error_ms=None)


def learn_destination_site(client: PeerClient) -> str | None:
    """The destination's site id (fhirimg answers it on history requests); None elsewhere."""
    try:
        client.get_bundle(f"{client.base}/_history?_count=0")
    except PeerError as exc:
        log.info("push to %s: could not learn its site id (%s); no change will be held back as an echo",
                 client.base, exc)
    return client.peer_site


def run_push(repo: Repository, client: PeerClient, link: Link, own_site: str, batch_size: int,
             clock: Callable[[], float] = time.time) -> PushReport:
    try:
        return push_once(repo, client, link, own_site, batch_size, clock)
    except Exception as exc:  # noqa: BLE001 - every failure must show in `replicate status`
        message = f"{type(exc).__name__}: {exc}"
        log.error("replication link %s (push to %s) failed: %s", link.name, link.url, message)
        record_error(repo.engine, link.name, message, int(clock() * 1000))
        return PushReport(errors=[message])
