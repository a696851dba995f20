"""Delivering one subscription's notifications over rest-hook: at least once, in order.

``deliver`` does what is due for one subscription and returns: the handshake of a
``requested`` subscription, then its undelivered events one notification each, oldest
first, each only after the one before was acknowledged (2xx), or a heartbeat when nothing
was sent for ``heartbeatPeriod``. Progress (``delivered``) is written after the subscriber
acknowledged, with a compare-and-set on the number before it: a crash between the POST and
that write re-sends the same event with the same eventNumber, never skips one, and two
deliverers (a lock lost with Redis) cannot move it backwards or past a gap.

A failure sets the next attempt after an exponential backoff with full jitter (or the
subscriber's Retry-After, bounded), and once the deliveries have failed for
``max_error_seconds`` the subscription's status becomes ``error``; events keep being
numbered and kept, heartbeats carry the error, retries continue at the longest backoff, and
the first success sets it ``active`` again and carries on from the first undelivered event.
Every attempt is an AuditEvent (who received which patient's data, when, with what result).
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import orjson
import requests
from sqlalchemy import and_, select, update

from ..audit.chain import append_events
from ..audit.events import Act, event_rows
from ..errors import Conflict, PreconditionFailed
from ..replicate.links import writing
from ..store.repository import Repository
from ..store.schema import resource_current, resource_version
from ..transfer.client import make_session, parse_retry_after
from ..transfer.netpolicy import HostPolicy, HostRefused
from . import notify
from .grants import subscriber
from .notify import Event
from .schema import subscription_event, subscription_state
from .settings import SubscriptionSettings
from .validate import channel_code

log = logging.getLogger("fhirimg.subscriptions")
BATCH = 100
USER_AGENT = "fhirimg-subscriptions"


@dataclass
class Delivery:
    """What one call of ``deliver`` did."""

    sent: int = 0  # notifications acknowledged
    events: int = 0  # events acknowledged
    failed: bool = False
    error: str | None = None
    next_attempt_ms: int | None = None
    kinds: list[str] = field(default_factory=list)


class Superseded(Exception):
    """The subscription's progress was moved by someone else: this delivery stops."""


class Failed(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass
class Deliverer:
    repo: Repository
    settings: SubscriptionSettings
    policy: HostPolicy
    base: str  # this server's FHIR base, for fullUrls
    clock: Callable[[], float] = time.time
    session: requests.Session | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self):
        self.opened: list = []  # this deliverer's sockets, for the deadline of each POST
        self.session = self.session or deadline_session(self.policy, self.opened)

    def close(self) -> None:
        self.session.close()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- one subscription ---------------------------------------------------------------
    def deliver(self, sub_id: str, max_events: int = 10_000, budget_seconds: float | None = None) -> Delivery:
        """Do what is due, within `max_events` and `budget_seconds` (no new POST after it)."""
        done = Delivery()
        deadline = time.monotonic() + budget_seconds if budget_seconds else None
        loaded = self.load(sub_id)
        if loaded is None:
            return done
        version, sub, state = loaded
        if channel_code(sub) != "rest-hook" or sub.get("status") not in ("requested", "active", "error"):
            return done
        if self.ended(sub_id, version, sub):
            return done
        if state.next_attempt_ms > self.now_ms():
            done.next_attempt_ms = state.next_attempt_ms
            return done
        kind, event = "handshake", None
        try:
            if sub.get("status") == "requested" or state.handshake_version is None:
                self.send(sub, notify.handshake(sub_id, sub, state.events, self.now_ms()), "handshake")
                self.acknowledged(sub_id, version, sub, state, "handshake")
                done.kinds.append("handshake")
                version, sub, state = self.load(sub_id) or (version, sub, state)
            kind = "event-notification"
            while done.events < max_events:
                events = self.pending(sub_id, state.delivered)
                if not events:
                    break
                with self.repo.engine.connect() as conn:
                    principal = subscriber(conn, state)
                for event in events:
                    if deadline is not None and time.monotonic() > deadline:
                        return done  # the rest in the next job: other subscriptions wait for this one
                    with self.repo.engine.connect() as conn:
                        body = notify.event_notification(conn, sub_id, sub, principal, state.events, [event],
                                                         self.base, self.now_ms())
                    self.send(sub, body, kind, event)
                    state = self.advance(sub_id, sub, state, event)
                    done.sent += 1
                    done.events += 1
                    done.kinds.append(kind)
                event = None
                fresh = self.load(sub_id)  # a client may have turned it off meanwhile
                if fresh is None or fresh[1].get("status") not in ("active", "error"):
                    return done
                version, sub, state = fresh
            kind = "heartbeat"
            if not done.events and not done.kinds and self.heartbeat_due(sub, state):
                error = state.last_error if sub.get("status") == "error" else None
                self.send(sub, notify.heartbeat(sub_id, sub, state.events, self.now_ms(), error), kind)
                self.acknowledged(sub_id, version, sub, state, kind)
                done.kinds.append(kind)
        except Superseded as exc:
            log.info("%s; this delivery stops", exc)
        except Failed as exc:
            done.failed, done.error = True, str(exc)
            done.next_attempt_ms = self.failed(sub_id, version, sub, state, exc, kind, event)
        except Exception as exc:  # noqa: BLE001 - anything else backs off too, never a hot loop
            log.exception("subscription %s: delivery failed", sub_id)
            done.failed, done.error = True, f"internal error: {type(exc).__name__}"
            try:
                done.next_attempt_ms = self.failed(sub_id, version, sub, state, Failed(done.error), kind, event)
            except Exception:  # noqa: BLE001 - the database itself is failing: the lease expires, a later run retries
                log.exception("subscription %s: could not record the failure", sub_id)
        return done

    def send(self, sub: dict, body: dict, kind: str, event: Event | None = None) -> None:
        """POST one notification; Failed unless the subscriber answered 2xx."""
        url = sub["endpoint"]
        headers = {"Content-Type": "application/fhir+json", "User-Agent": USER_AGENT}
        for param in sub.get("parameter") or []:
            headers[param["name"]] = param["value"]
        timeout = min(float(sub.get("timeout") or self.settings.timeout), self.settings.timeout)
        status, retry_after = None, None
        # `timeout` bounds each socket operation; this bounds the whole POST (an endpoint
        # trickling its answer a byte at a time would otherwise hold the delivery for ever).
        self.opened[:] = [sock for sock in self.opened if sock.fileno() != -1]
        fired = threading.Event()
        watchdog = threading.Timer(timeout, cut_off, args=(self.opened, fired))
        watchdog.daemon = True
        watchdog.start()
        try:
            self.policy.check_url(url)
            response = self.session.post(url, data=orjson.dumps(body), headers=headers, timeout=timeout,
                                         allow_redirects=False, stream=True)
            try:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock())
                response.raw.read(64 * 1024, decode_content=False)  # enough to reuse the connection; bounded
            finally:
                response.close()
        except HostRefused as exc:
            raise Failed(f"the endpoint is refused: {exc}") from None
        except (requests.RequestException, OSError) as exc:
            late = " (over the time limit)" if fired.is_set() else ""
            raise Failed(f"{kind} not delivered: {type(exc).__name__}{late}") from None
        finally:
            watchdog.cancel()
        if not 200 <= status < 300:
            raise Failed(f"the endpoint answered HTTP {status} to the {kind}", status, retry_after)

    # -- state ----------------------------------------------------------------------------
    def load(self, sub_id: str):
        sub = self.load_sub(sub_id)
        if sub is None:
            return None
        with self.repo.engine.connect() as conn:
            state = conn.execute(select(subscription_state).where(subscription_state.c.sub_id == sub_id)).first()
        if state is None:
            return None
        return sub.pop("_version"), sub, state

    def load_sub(self, sub_id: str) -> dict | None:
        stored = self.repo.read("Subscription", sub_id)
        if stored is None or stored.is_deleted:
            return None
        return {**stored.resource, "_version": stored.version}

    def pending(self, sub_id: str, delivered: int) -> list[Event]:
        ev = subscription_event
        with self.repo.engine.connect() as conn:
            rows = conn.execute(select(ev).where(ev.c.sub_id == sub_id, ev.c.number > delivered)
                                .order_by(ev.c.number).limit(BATCH)).all()
        if rows and rows[0].number != delivered + 1:
            # Cannot happen while undelivered events are kept (jobs.prune); should it, the
            # subscription must not stall for ever on a number that is gone.
            log.error("subscription %s: events %d..%d are missing; delivery goes on from %d", sub_id,
                      delivered + 1, rows[0].number - 1, rows[0].number)
            with writing(self.repo.engine) as conn:
                conn.execute(update(subscription_state).where(subscription_state.c.sub_id == sub_id,
                                                              subscription_state.c.delivered == delivered)
                             .values(delivered=rows[0].number - 1))
            raise Superseded(f"subscription {sub_id}: skipped a gap")
        return [Event(r.number, r.seq, r.res_type, r.res_id, r.version, r.occurred_ms) for r in rows]

    def advance(self, sub_id: str, sub: dict, state, event: Event):
        """The event was acknowledged: `delivered` moves to it (if it was the next one), and
        the delivery is audited, in one transaction."""
        st = subscription_state
        now = self.now_ms()
        rows = self.audit_rows(sub_id, sub, state, "event-notification", event, 200, None)
        with writing(self.repo.engine) as conn:
            moved = conn.execute(update(st).where(st.c.sub_id == sub_id, st.c.delivered == event.number - 1)
                                 .values(delivered=event.number, last_delivered_ms=now, last_sent_ms=now,
                                         attempts=0, failing_since_ms=None, next_attempt_ms=0)).rowcount
            append_events(conn, rows)
            state = conn.execute(select(st).where(st.c.sub_id == sub_id)).first()
        if moved != 1:
            # Another deliverer moved it (its lock was lost), or the client re-created the
            # subscription: stop here; the next run starts from what the database says.
            raise Superseded(f"subscription {sub_id}: delivered is {state.delivered if state else None}, "
                             f"not {event.number - 1}")
        if sub.get("status") == "error":
            self.set_status(sub_id, "active")
            sub["status"] = "active"
        return state

    def acknowledged(self, sub_id: str, version: int, sub: dict, state, kind: str) -> None:
        st = subscription_state
        now = self.now_ms()
        values = {"last_sent_ms": now, "attempts": 0, "failing_since_ms": None, "next_attempt_ms": 0}
        period = sub.get("heartbeatPeriod")
        if kind == "heartbeat" and period and state.last_sent_ms and now - state.last_sent_ms < 2 * period * 1000:
            # The beat counts from when it was due, not from when it went out: dispatch and POST
            # times do not add up from one beat to the next (heartbeats keep their period).
            values["last_sent_ms"] = state.last_sent_ms + period * 1000
        rows = self.audit_rows(sub_id, sub, state, kind, None, 200, None)
        with writing(self.repo.engine) as conn:
            conn.execute(update(st).where(st.c.sub_id == sub_id).values(**values))
            if kind == "handshake":  # unless a client asked for a new handshake meanwhile
                conn.execute(update(st).where(st.c.sub_id == sub_id, st.c.handshake_version.is_(None))
                             .values(handshake_version=version))
            append_events(conn, rows)
        if sub.get("status") in ("requested", "error"):
            self.set_status(sub_id, "active", version if kind == "handshake" else None)

    def failed(self, sub_id: str, version: int, sub: dict, state, exc: Failed, kind: str,
               event: Event | None) -> int:
        st = subscription_state
        now = self.now_ms()
        attempts = state.attempts + 1
        since = state.failing_since_ms or now
        delay = self.backoff(attempts, exc.retry_after)
        next_ms = now + int(delay * 1000)
        rows = self.audit_rows(sub_id, sub, state, kind, event, exc.status or 502, str(exc))
        with writing(self.repo.engine) as conn:
            conn.execute(update(st).where(st.c.sub_id == sub_id)
                         .values(attempts=attempts, failing_since_ms=since, last_error=str(exc)[:1000],
                                 last_error_ms=now, next_attempt_ms=next_ms))
            append_events(conn, rows)
        log.warning("subscription %s: %s (attempt %d, next in %.1fs)", sub_id, exc, attempts, delay)
        status = sub.get("status")
        if status == "requested" or (status == "active" and now - since >= self.settings.max_error_seconds * 1000):
            self.set_status(sub_id, "error")  # a failed handshake, or failing for too long
        return next_ms

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Full jitter over an exponential ceiling; a Retry-After is a floor (bounded)."""
        ceiling = min(self.settings.max_backoff, self.settings.first_backoff * 2 ** min(attempts - 1, 30))
        delay = self.rng.uniform(self.settings.first_backoff / 2, max(ceiling, self.settings.first_backoff / 2))
        if retry_after is not None:  # the subscriber's own word, up to a day
            delay = max(delay, min(retry_after, 86_400.0))
        return delay

    def heartbeat_due(self, sub: dict, state) -> bool:
        period = sub.get("heartbeatPeriod")
        if not period:
            return False
        last = state.last_sent_ms or 0
        return self.now_ms() - last >= period * 1000

    def ended(self, sub_id: str, version: int, sub: dict) -> bool:
        """A subscription past its `end` is turned off (R5: the server stops it then)."""
        if not ended(sub, self.now_ms()):
            return False
        self.set_status(sub_id, "off")
        return True

    def set_status(self, sub_id: str, status: str, version: int | None = None) -> None:
        set_status(self.repo, sub_id, status, version)

    def audit_rows(self, sub_id: str, sub: dict, state, kind: str, event: Event | None, status: int,
                   error: str | None) -> list:
        host = urlsplit(sub.get("endpoint") or "").hostname or ""
        return notification_audit_rows(self.repo, sub_id, state.client_id, kind, event, status, error, host,
                                       self.now_ms())

def deadline_session(policy: HostPolicy, opened: list) -> requests.Session:
    """The transfer client's guarded session, recording each socket it opens in `opened`
    so that a watchdog can cut a POST off at its deadline."""
    session = make_session(policy)
    for adapter in {id(a): a for a in session.adapters.values()}.values():
        pools = adapter.poolmanager.pool_classes_by_scheme
        for scheme, pool_class in list(pools.items()):
            connection_class = pool_class.ConnectionCls

            class Recording(connection_class):
                def _new_conn(self):
                    sock = super()._new_conn()
                    opened.append(sock)
                    return sock

            pools[scheme] = type(pool_class.__name__, (pool_class,), {"ConnectionCls": Recording})
    return session


def cut_off(opened: list, fired: threading.Event) -> None:
    """Shut the sockets down: a thread blocked reading one returns at once."""
    fired.set()
    for sock in list(opened):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def ended(sub: dict, now_ms: int) -> bool:
    """Whether the subscription's `end` has passed."""
    from ..search.dates import BadDate, date_range
    if not sub.get("end"):
        return False
    try:
        return date_range(sub["end"])[0] <= now_ms
    except (BadDate, ValueError, TypeError):
        return False


def set_status(repo: Repository, sub_id: str, status: str, version: int | None = None) -> None:
    """A new version of the Subscription with `status`, written as this server (retried on a
    concurrent client write; a client's own off or entered-in-error wins). With `version`,
    only if that version is still the current one (a handshake confirms the version it was
    sent for, not one a client wrote meanwhile with another endpoint)."""
    for _ in range(3):
        stored = repo.read("Subscription", sub_id)
        if stored is None or stored.is_deleted or stored.resource.get("status") in ("off", "entered-in-error"):
            return
        if version is not None and stored.version != version:
            return
        if stored.resource.get("status") == status:
            return
        resource = {k: v for k, v in stored.resource.items() if k != "meta"}
        resource["status"] = status
        try:
            repo.update("Subscription", sub_id, resource, if_match=stored.version)
            log.info("subscription %s: status %s", sub_id, status)
            return
        except (Conflict, PreconditionFailed):
            continue


def audit_notification(repo: Repository, sub_id: str, client_id: str, kind: str, event: Event | None,
                       status: int | None, error: str | None, network: str, now_ms: int) -> None:
    """``notification_audit_rows``, appended in a transaction of their own."""
    rows = notification_audit_rows(repo, sub_id, client_id, kind, event, status, error, network, now_ms)
    if rows:
        with writing(repo.engine) as conn:
            append_events(conn, rows)


def notification_audit_rows(repo: Repository, sub_id: str, client_id: str, kind: str, event: Event | None,
                            status: int | None, error: str | None, network: str, now_ms: int) -> list:
    """One AuditEvent per notification sent or attempted (the recipient, the event's patient,
    the outcome); never the endpoint's path or its headers, which may carry secrets."""
    if repo.auditor is None:
        return []
    resources = [f"Subscription/{sub_id}"]
    details = {"notification": kind, "endpoint-host": network}
    patient = None
    if event is not None:
        resources.append(f"{event.res_type}/{event.res_id}/_history/{event.version}")
        details["eventNumber"] = str(event.number)
        patient = patient_of(repo.engine, event)
    act = Act("operation", now_ms, client_id, repo.site, status=status or 502, network=network or None,
              resources=resources, details=details, reason=error)
    return event_rows(act, [patient])


def patient_of(engine, event: Event) -> str | None:
    if event.res_type == "Patient":
        return event.res_id
    with engine.connect() as conn:
        content = conn.execute(select(resource_version.c.content).where(resource_version.c.seq == event.seq)).scalar()
    resource = orjson.loads(content) if content else {}
    ref = (resource.get("subject") or resource.get("for") or {}).get("reference") or ""
    return ref[8:] if ref.startswith("Patient/") else None


def scan_channels(engine) -> dict[str, list[str]]:
    """The ids of the Subscriptions that are not deleted, by channel code."""
    from .matcher import parsed_versions
    cur = resource_current
    with engine.connect() as conn:
        rows = conn.execute(select(cur.c.res_id, cur.c.version).where(
            cur.c.res_type == "Subscription", cur.c.is_deleted.is_(False))).all()
        parsed = parsed_versions(conn, [(row.res_id, row.version) for row in rows])
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(channel_code(parsed[(row.res_id, row.version)][0]) or "", []).append(row.res_id)
    return out


def scan_subscriptions(engine, now_ms: int) -> tuple[list[str], int | None]:
    """Live rest-hook subscriptions with something to do now - events not yet delivered, a
    handshake pending, a heartbeat due, or an end passed - and when the next heartbeat or
    retry falls due. Contents come from the matcher's per-version cache: a scan reads state
    rows, not JSON."""
    from .matcher import parsed_versions
    st, cur = subscription_state, resource_current
    with engine.connect() as conn:
        rows = conn.execute(
            select(st.c.sub_id, st.c.events, st.c.delivered, st.c.handshake_version, st.c.last_sent_ms,
                   st.c.next_attempt_ms, cur.c.version)
            .select_from(st.join(cur, and_(cur.c.res_type == "Subscription", cur.c.res_id == st.c.sub_id)))
            .where(cur.c.is_deleted.is_(False))).all()
        parsed = parsed_versions(conn, [(row.sub_id, row.version) for row in rows])
    due, wake = [], None
    for row in rows:
        sub = parsed[(row.sub_id, row.version)][0]
        if channel_code(sub) != "rest-hook" or sub.get("status") not in ("requested", "active", "error"):
            continue
        if row.next_attempt_ms > now_ms:  # backing off
            wake = min(wake or row.next_attempt_ms, row.next_attempt_ms)
            continue
        beat = sub.get("heartbeatPeriod")
        beat_at = (row.last_sent_ms or 0) + beat * 1000 if beat else None
        if row.events > row.delivered or row.handshake_version is None or sub.get("status") == "requested" \
                or (beat_at is not None and beat_at <= now_ms) or ended(sub, now_ms):
            due.append(row.sub_id)
        elif beat_at is not None:
            wake = min(wake or beat_at, beat_at)
    return due, wake
