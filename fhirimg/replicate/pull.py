"""Pull: read a source's history from the saved cursor and apply it here, page by page.

Each page is applied in ONE local transaction together with the new cursor (the page's
``next`` link, or after the last page the source's next-poll link), so a crash at any
point leaves the cursor on the first page not yet applied: restarting re-reads that
page (history pages are immutable snapshots on fhirimg) and applies it once.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..store.repository import Repository
from .apply import ApplyContext, MalformedEntry, PageOutcome, apply_changes, parse_change
from .client import PeerClient, PeerError
from .links import LinkState, advance, claim_cursor, load_state, record_error
from .origin import record_origins
from .settings import Link

log = logging.getLogger("fhirimg.replicate")
NEXT_POLL_EXTENSION = "https://fhirimg.org/fhir/StructureDefinition/next-poll"


@dataclass
class PullReport:
    pages: int = 0
    applied: int = 0
    skipped: int = 0
    conflicts: int = 0
    rejected: int = 0
    caught_up: bool = False
    errors: list[str] = field(default_factory=list)


def first_url(link: Link, page_size: int) -> str:
    params = [("_sort", "_lastUpdated"), ("_count", str(page_size))]
    if link.types:
        params.append(("_type", ",".join(link.types)))
    return f"{link.url}/_history?{urlencode(params)}"


def pull_once(repo: Repository, client: PeerClient, link: Link, own_site: str, page_size: int = 200,
              clock: Callable[[], float] = time.time, max_pages: int | None = None,
              after_page: Callable[[int, list], None] | None = None) -> PullReport:
    """Follow the source's history from the cursor to its end (or `max_pages`).

    The next page is fetched while the current one is applied (a thread of its own: the
    fetch waits on the network, the apply on the database): a fresh replica's catch-up
    spent a fifth of its time waiting for pages. A page is still applied only after the
    one before it committed with its cursor; a failed apply discards the page fetched ahead.
    """
    report = PullReport()
    state = load_state(repo.engine, link, int(clock() * 1000))
    snapshot_started = None
    url = state.cursor or first_url(link, page_size)
    with ThreadPoolExecutor(1, thread_name_prefix="replicate-fetch") as fetcher:
        fetched_at = clock()
        ahead = fetcher.submit(client.get_bundle, url)
        while max_pages is None or report.pages < max_pages:
            snapshot_started = snapshot_started or fetched_at
            bundle = ahead.result()
            next_url, poll_url = page_links(bundle, url, client)
            changes = parse_page(bundle, url)
            if next_url and (max_pages is None or report.pages + 1 < max_pages):
                fetched_at = clock()
                ahead = fetcher.submit(client.get_bundle, next_url)
            outcome = apply_page(repo, client, link, own_site, state, changes, next_url or poll_url,
                                 int(clock() * 1000), caught_up_ms=None if next_url else int(snapshot_started * 1000))
            report.pages += 1
            for name in ("applied", "skipped", "conflicts", "rejected"):
                setattr(report, name, getattr(report, name) + getattr(outcome, name))
            if after_page:
                after_page(report.pages, changes)
            if not next_url:
                report.caught_up = True
                break
            url = next_url
    return report


def apply_page(repo: Repository, client: PeerClient, link: Link, own_site: str, state: LinkState,
               changes: list, new_cursor: str, now_ms: int, caught_up_ms: int | None) -> PageOutcome:
    ctx = ApplyContext(link.name, own_site, client.peer_site or link.url, frozenset(link.types),
                       link.conflict_rule, now_ms)
    outcome = PageOutcome()
    # Audited as this site's replicator, naming the link and the peer it read from.
    actor = replace(repo.server_actor(), client_id=f"replication:{link.name}", network=urlsplit(link.url).netloc)
    with repo.transaction(actor=actor) as uow:
        claim_cursor(uow.conn, link.name, state.cursor, now_ms)
        apply_changes(uow, ctx, changes, outcome)
        uow.flush_versions()  # assigns seq now, so the origins go into this same transaction
        record_origins(uow.conn, [{"seq": s.seq, "origin": o, "link": link.name} for s, o in outcome.origins])
        extra = {"peer_site": client.peer_site} if client.peer_site else {}
        if caught_up_ms is not None:
            extra["caught_up_ms"] = caught_up_ms
        advance(uow.conn, state, new_cursor, now_ms, applied=outcome.applied, skipped=outcome.skipped,
                conflicts=outcome.conflicts, rejected=outcome.rejected, **extra)
    return outcome


def parse_page(bundle, url: str) -> list:
    """The page's changes, oldest first (an entry that cannot be read is a str saying why);
    a Bundle that is not a history Bundle raises PeerError (retried later)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "history":
        raise PeerError(f"{url} did not answer with a history Bundle", retryable=True)
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise PeerError(f"{url}: Bundle.entry is not a list", retryable=True)
    changes = []
    for i, entry in enumerate(entries):
        try:
            changes.append(parse_change(entry, i))
        except MalformedEntry as exc:
            # One entry nobody can apply must not hold the link for ever: it is recorded
            # (replicate status shows it) and passed over.
            changes.append(f"{url}: {exc}")
    stamps = [c.updated_ms for c in changes if not isinstance(c, str) and c.updated_ms is not None]
    if len(stamps) > 1 and stamps[0] > stamps[-1]:
        changes.reverse()  # a source that ignored _sort=_lastUpdated answers newest first
    return changes


def page_links(bundle: dict, url: str, client: PeerClient) -> tuple[str | None, str]:
    """(next page of this snapshot or None, where the next poll starts)."""
    links = bundle.get("link") if isinstance(bundle, dict) else None
    next_url = next((link.get("url") for link in links or () if isinstance(link, dict)
                     and link.get("relation") == "next" and isinstance(link.get("url"), str)), None)
    meta = bundle.get("meta") if isinstance(bundle, dict) else None
    poll = next((ext.get("valueUri") for ext in (meta or {}).get("extension") or ()
                 if isinstance(ext, dict) and ext.get("url") == NEXT_POLL_EXTENSION), None)
    if poll is None:
        # A server without our next-poll link: restart from the snapshot's lastUpdated
        # (inclusive, so changes of that millisecond come again and are skipped as applied).
        since = (meta or {}).get("lastUpdated")
        poll = with_params(url, _since=since, _cursor=None) if since else url
    for candidate in (next_url, poll):
        if candidate:
            client.check_same_origin(candidate)
    return next_url, poll


def with_params(url: str, **params) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_pull(repo: Repository, client: PeerClient, link: Link, own_site: str, page_size: int,
             clock: Callable[[], float] = time.time) -> PullReport:
    """pull_once that records a failure on the link instead of raising (for loops and jobs)."""
    try:
        return pull_once(repo, client, link, own_site, page_size, clock)
    except Exception as exc:  # noqa: BLE001 - every failure must show in `replicate status`
        message = f"{type(exc).__name__}: {exc}"
        log.error("replication link %s (pull from %s) failed: %s", link.name, link.url, message)
        record_error(repo.engine, link.name, message, int(clock() * 1000))
        return PullReport(errors=[message])
