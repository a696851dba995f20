"""Forwarding the audit trail to external audit repositories, from a durable outbox.

The outbox is the audit table itself: each target has a cursor row (cursors.audit_forward)
and a round sends the events after it, up to batch_size, advancing the cursor only after
the target acknowledged them. Delivery is at least once: a batch that failed, or whose
acknowledgement was lost, is sent again, with the same (site, seq) identifier so the
receiver can drop the copy. After a failure the target waits an exponential back-off with
jitter (forward_interval doubling up to forward_max_backoff).

Two workers never send a target's batch at once: a round first takes the row's lease by a
compare-and-set (it expires if the worker dies), and advances the cursor by a
compare-and-set on the value it read. No database lock or transaction is held while the
network is used.
"""
from __future__ import annotations

import logging
import random
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..store.engine import WRITE_OPTION
from .cursors import audit_forward
from .portable import forwarded_resource, local_site
from .retention import Clock, now_ms
from .schema import audit_event
from .senders import ForwardError, Target, configured_targets, sender_for

log = logging.getLogger("fhirimg.audit")

MAX_ERROR_LENGTH = 500


@dataclass
class Result:
    """What one round did for one target."""

    target: str
    status: str  # sent | idle (nothing new) | failed | waiting (backing off) | busy (another worker) | moved
    sent: int = 0
    through_seq: int = 0
    error: str | None = None


def run_forward_round(engine, config: dict, clock: Clock = now_ms, force: bool = False,
                      site: str | None = None) -> list[Result]:
    """One batch per configured target; `force` ignores the back-off (never another worker's lease)."""
    targets = configured_targets(config)
    if not targets:
        return []
    site = site or local_site(engine, config)
    section = config["audit"]
    return [forward_target(engine, target, site, section, clock, force) for target in targets]


def forward_target(engine, target: Target, site: str, section: dict, clock: Clock, force: bool = False) -> Result:
    owner = uuid.uuid4().hex
    ensure_cursor(engine, target.name)
    claimed = claim_lease(engine, target, owner, clock(), force)
    if isinstance(claimed, Result):
        return claimed
    cursor, failures = claimed
    try:
        rows = pending_events(engine, cursor, target.batch_size)
        if rows:
            send_batch(target, [forwarded_resource(row, site) for row in rows])
    except Exception as exc:  # noqa: BLE001 - any failure is the target's failure: recorded, retried later
        error = describe_error(exc)
        log.warning("audit forward %s failed (%d in a row): %s", target.name, failures + 1, error)
        record_failure(engine, target.name, owner, failures + 1, error, clock(), section)
        return Result(target.name, "failed", 0, cursor, error)
    if not rows:
        release_lease(engine, target.name, owner)
        return Result(target.name, "idle", 0, cursor)
    if not record_success(engine, target.name, owner, cursor, rows[-1].seq, clock()):
        return Result(target.name, "moved", len(rows), cursor, "another worker moved the cursor")
    return Result(target.name, "sent", len(rows), rows[-1].seq)


def send_batch(target: Target, resources: list[dict]) -> None:
    sender = sender_for(target)
    try:
        sender.send(resources)
    finally:
        sender.close()


def describe_error(exc: Exception) -> str:
    """What is stored and shown: our own messages as they are, others with their type."""
    text = str(exc) if isinstance(exc, ForwardError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_LENGTH]


def writing(engine):
    return engine.connect().execution_options(**{WRITE_OPTION: True})


def ensure_cursor(engine, name: str) -> None:
    """A new target starts at the beginning of the chain (everything still stored is sent)."""
    try:
        with writing(engine) as conn, conn.begin():
            if conn.execute(select(audit_forward.c.target).where(audit_forward.c.target == name)).first() is None:
                conn.execute(insert(audit_forward).values(target=name, forwarded_through_seq=0, failures=0,
                                                          next_attempt_ms=0, lease_until_ms=0))
    except IntegrityError:
        pass  # another worker made it first


def lease_ms(target: Target) -> int:
    """Longer than any round can take (one request or connection, bounded by the timeout)."""
    return int((target.timeout * 4 + 60) * 1000)


def claim_lease(engine, target: Target, owner: str, now: int, force: bool) -> tuple[int, int] | Result:
    """(cursor, failures) with the lease held, or the Result saying why the target is skipped."""
    c = audit_forward.c
    due = (c.lease_until_ms <= now) if force else (c.lease_until_ms <= now) & (c.next_attempt_ms <= now)
    with writing(engine) as conn, conn.begin():
        claimed = conn.execute(update(audit_forward).where(c.target == target.name, due)
                               .values(lease_owner=owner, lease_until_ms=now + lease_ms(target))).rowcount
        row = conn.execute(select(c.forwarded_through_seq, c.failures, c.lease_until_ms)
                           .where(c.target == target.name)).one()
    if claimed == 1:
        return row.forwarded_through_seq, row.failures
    status = "busy" if row.lease_until_ms > now else "waiting"
    return Result(target.name, status, 0, row.forwarded_through_seq)


def release_lease(engine, name: str, owner: str) -> None:
    c = audit_forward.c
    with writing(engine) as conn, conn.begin():
        conn.execute(update(audit_forward).where(c.target == name, c.lease_owner == owner)
                     .values(lease_owner=None, lease_until_ms=0))


def pending_events(engine, cursor: int, limit: int) -> list:
    t = audit_event
    with engine.connect() as conn:
        return conn.execute(select(t.c.seq, t.c.recorded_ms, t.c.event, t.c.prev_hash, t.c.row_hash)
                            .where(t.c.seq > cursor).order_by(t.c.seq).limit(limit)).all()


def record_success(engine, name: str, owner: str, old: int, new: int, now: int) -> bool:
    """Advance the cursor from `old` to `new` (compare-and-set); False if someone else moved it."""
    c = audit_forward.c
    with writing(engine) as conn, conn.begin():
        return conn.execute(update(audit_forward)
                            .where(c.target == name, c.forwarded_through_seq == old, c.lease_owner == owner)
                            .values(forwarded_through_seq=new, failures=0, last_error=None, last_attempt_ms=now,
                                    last_success_ms=now, next_attempt_ms=0, lease_owner=None,
                                    lease_until_ms=0)).rowcount == 1


def record_failure(engine, name: str, owner: str, failures: int, error: str, now: int, section: dict) -> None:
    c = audit_forward.c
    delay = backoff_seconds(failures, section["forward_interval"], section["forward_max_backoff"])
    with writing(engine) as conn, conn.begin():
        conn.execute(update(audit_forward).where(c.target == name, c.lease_owner == owner)
                     .values(failures=failures, last_error=error, last_attempt_ms=now,
                             next_attempt_ms=now + int(delay * 1000), lease_owner=None, lease_until_ms=0))


def backoff_seconds(failures: int, interval: float, ceiling: float, uniform=random.uniform) -> float:
    """interval doubling with each failure, up to ceiling; "equal jitter" (half fixed, half random)
    so that workers restarted together do not retry together, and never retry at once."""
    top = min(ceiling, interval * 2 ** min(failures - 1, 32))
    return top / 2 + uniform(0, top / 2)


class Forwarder:
    """Runs forwarding rounds in a daemon thread of the worker process: at once again while
    a target is behind by more than a batch, else every forward_interval seconds."""

    def __init__(self, config: dict, engine=None):
        self.config = config
        self.engine = engine
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="audit-forward", daemon=True)

    def start(self) -> Forwarder:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        delay = 0.0
        while not self.stopped.wait(delay):
            results = self.run_once()
            full = any(r.status == "sent" and r.sent >= t.batch_size
                       for r, t in zip(results, configured_targets(self.config)))
            delay = 0.0 if full else self.config["audit"]["forward_interval"]

    def run_once(self) -> list[Result]:
        try:
            return run_forward_round(self.own_engine(), self.config)
        except Exception:
            log.exception("audit forwarding round failed; will retry")
            return []

    def own_engine(self):
        """Made in the thread, on first use: never shared with a job's forked process."""
        if self.engine is None:
            from ..store import create_schema, make_engine
            self.engine = make_engine(self.config["database_url"], pool_size=2)
            create_schema(self.engine)
        return self.engine


def prepare_forwarding(config: dict) -> Forwarder | None:
    """Called by the worker process at start-up: forward when [[audit.forward]] targets are configured."""
    if not config["audit"]["forward"]:
        return None
    return Forwarder(config).start()
