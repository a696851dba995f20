"""Group commit of read and query events: durable before the response, cheap under load.

Leader and followers (as databases group their log flushes): a request that finds no
commit under way commits its own events at once, in its own thread, together with any
that are waiting; requests that arrive while a commit is under way wait, and the first
of them to wake commits everything that gathered meanwhile. Alone, a request pays one
commit and no thread hand-off (with a committer thread, the wake-ups cost more than the
commit on 2 cores); under load, one commit carries the events of many requests.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from ..errors import FhirError
from ..store import driver
from ..store.engine import WRITE_OPTION, writer_gate
from .chain import append_events

log = logging.getLogger("fhirimg.audit")


class AuditUnavailable(FhirError):
    """The events could not be made durable (in time): the request is not answered."""

    def __init__(self, reason: str):
        super().__init__(503, "transient", f"the audit trail is unavailable ({reason}); nothing was answered, "
                         "retry later", headers={"Retry-After": "1"})


@dataclass
class Ticket:
    rows: list
    done: bool = False
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, engine, max_batch: int = 1000, timeout: float = 10.0):
        self.engine = engine
        self.max_batch = max_batch
        self.timeout = timeout
        self.waiting: list[Ticket] = []
        self.cond = threading.Condition()
        self.leading = False
        self.commits = 0  # how many transactions carried events (bench and tests read it)
        self.conn = None
        self.autocommit = False
        self.pid = os.getpid()

    def record(self, rows: list[tuple[dict, str | None, int]]) -> None:
        """Return once `rows` are committed; AuditUnavailable if they could not be (in time)."""
        if not rows:
            return
        ticket = Ticket(rows)
        deadline = time.monotonic() + self.timeout
        with self.cond:
            self.waiting.append(ticket)
            while not ticket.done:
                if not self.leading:
                    self.lead()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AuditUnavailable(f"no commit within {self.timeout} s")
                self.cond.wait(remaining)
        if ticket.error is not None:  # its details are in the log, not in the client's answer
            raise AuditUnavailable("the events could not be committed") from ticket.error

    def lead(self) -> None:
        """Commit what is waiting (called with the condition held; released while committing)."""
        batch, count = [], 0
        while self.waiting and (not batch or count + len(self.waiting[0].rows) <= self.max_batch):
            ticket = self.waiting.pop(0)
            batch.append(ticket)
            count += len(ticket.rows)
        self.leading = True
        self.cond.release()
        error = None
        try:
            self.commit([row for ticket in batch for row in ticket.rows])
        except Exception as exc:  # noqa: BLE001 - every waiter of the group is told
            log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), exc)
            error = exc
        finally:
            self.cond.acquire()
            self.leading = False
            for ticket in batch:
                ticket.done, ticket.error = True, error
            self.cond.notify_all()

    def commit(self, rows: list) -> None:
        # One connection, used by one leader at a time (a pool checkout per group cost ~0.1
        # ms on SQLite); after an error it is dropped, and a forked child opens its own.
        if self.conn is None or self.pid != os.getpid():
            self.conn, self.pid = self.connect(), os.getpid()
        try:
            if self.autocommit:  # PostgreSQL: the append is one statement, its own transaction
                append_events(self.conn, rows)
            else:
                self.commit_sqlite(rows)
        except Exception:
            self.conn.close()
            self.conn = None
            raise
        self.commits += 1

    def commit_sqlite(self, rows: list) -> None:
        """BEGIN IMMEDIATE and COMMIT on the sqlite3 connection itself, through the engine's
        writer gate as every writer of the process: through SQLAlchemy's transaction and
        its begin/commit events they cost ~80 us of the ~130 a read's commit took."""
        raw = driver.raw_connection(self.conn)
        gate = writer_gate(self.engine)
        gate.enter(raw)
        try:
            try:
                raw.execute("BEGIN IMMEDIATE")
                append_events(self.conn, rows)
                raw.commit()
            except BaseException:
                try:
                    if raw.in_transaction:
                        raw.rollback()
                except Exception:  # noqa: BLE001 - a closed connection: the first error is the one to raise
                    pass
                raise
        finally:
            gate.leave(raw)

    def connect(self):
        """The committer's own connection (out of the pool), whose lock waits end within the
        timeout: a leader stuck behind another process's lock must fail its group, not hang."""
        conn = self.engine.connect().execution_options(**{WRITE_OPTION: True})
        conn.detach()  # session settings below must not reach the pool's other users
        millis = int(self.timeout * 1000)
        self.autocommit = conn.dialect.name == "postgresql"
        if self.autocommit:
            conn.exec_driver_sql(f"SET lock_timeout = {millis}")
            conn.exec_driver_sql(f"SET statement_timeout = {millis}")
            conn.commit()
            # On psycopg itself: SQLAlchemy's isolation switch cannot reset a detached connection.
            driver.raw_connection(conn).autocommit = True
        else:  # on the sqlite3 connection itself: through SQLAlchemy it would BEGIN IMMEDIATE first
            driver.raw_connection(conn).execute(f"PRAGMA busy_timeout = {millis}")
        return conn
