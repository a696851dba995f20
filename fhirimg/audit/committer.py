"""Group commit of read and query events: durable before the response, cheap under load.

A request hands its events over as soon as it knows them (``submit``) and waits for them
just before its answer goes out (``wait``); ``record`` is both at once.

SQLite - leader and followers (as databases group their log flushes): a request that finds
no commit under way commits its own events at once, in its own thread, together with any
that are waiting; requests that arrive while a commit is under way wait, and the first of
them to wake commits everything that gathered meanwhile. Alone, a request pays one commit
(~0.08 ms) and no thread hand-off (with a committer thread, the wake-ups cost more than the
commit on 2 cores); under load, one commit carries the events of many requests.

PostgreSQL - pipelined: the append (one statement, its own transaction) is sent at once on
the committer's connection and its answer is read only when a request waits. The server
chains, writes and flushes its WAL while the view builds its answer, so the ~0.4 ms of a
synchronous commit mostly overlaps work the request does anyway (measured: 0.26 ms of work
plus the append took 0.79 ms in sequence, 0.30 pipelined). One append is in flight at a
time; events submitted meanwhile wait and go together as the next one, sent by whichever
waiting request reads the answer. No thread of its own: a committer thread would need the
GIL to send, and would get it only when the request thread blocks, which is at its wait.
After a response has gone out, the process folds in the search values it left behind
(``fold_if_due``, audit/fold.py).
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field

from ..errors import FhirError
from ..store import driver
from ..store.engine import WRITE_OPTION, writer_gate
from .chain import APPEND_SQL, append_events, postgres_event
from .fold import FOLD_AT, fold_waiting

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
    sendable: list = field(default_factory=list)  # PostgreSQL: the rows as the append function takes them


class GroupCommitter:
    def __init__(self, engine, max_batch: int = 1000, timeout: float = 10.0):
        self.engine = engine
        self.max_batch = max_batch
        self.timeout = timeout
        self.pipelined = engine.dialect.name == "postgresql"
        self.waiting: list[Ticket] = []
        self.cond = threading.Condition()
        self.leading = False  # SQLite: a request is committing
        self.inflight: list[Ticket] | None = None  # PostgreSQL: sent, answer not read yet
        self.reading = False  # PostgreSQL: a request is reading the answer
        self.commits = 0  # how many transactions carried events (bench and tests read it)
        self.since_fold = 0  # PostgreSQL: events appended by this process since it last folded
        self.folding = False
        self.conn = None
        self.pipe: Pipe | None = None
        self.inflight_deadline = 0.0
        self.pid = os.getpid()
        self.inherited: list = []  # a forked child's references to its parent's connections

    def record(self, rows: list[tuple[dict, str | None, int]]) -> None:
        """Return once `rows` are committed; AuditUnavailable if they could not be (in time)."""
        self.wait(self.submit(rows))

    def submit(self, rows: list[tuple[dict, str | None, int]]) -> Ticket:
        """Hand `rows` over; ``wait`` on the ticket before answering. SQLite commits them
        here (AuditUnavailable as ``record``); PostgreSQL sends them if nothing is in flight."""
        ticket = Ticket(rows, done=not rows)
        if ticket.done:
            return ticket
        self.after_fork()
        if not self.pipelined:
            self.lead_until_done(ticket)
            return ticket
        ticket.sendable = [postgres_event(row) for row in rows]  # the JSON work, outside the lock
        with self.cond:
            self.waiting.append(ticket)
            if self.inflight is None and not self.reading:
                self.send()
        return ticket

    def wait(self, ticket: Ticket) -> None:
        if not ticket.done:
            deadline = time.monotonic() + self.timeout
            with self.cond:
                while not ticket.done:
                    if self.inflight is not None and not self.reading and time.monotonic() < deadline:
                        self.read_answer(deadline)
                        continue
                    if self.inflight is None and self.waiting and not self.reading:
                        self.send()  # left behind by a reader that failed
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise AuditUnavailable(f"no commit within {self.timeout} s")
                    self.cond.wait(remaining)
        if ticket.error is not None:  # its details are in the log, not in the client's answer
            raise AuditUnavailable("the events could not be committed") from ticket.error

    # -- SQLite: leader and followers -----------------------------------------------------

    def lead_until_done(self, ticket: Ticket) -> None:
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

    def lead(self) -> None:
        """Commit what is waiting (called with the condition held; released while committing)."""
        batch = self.take_batch()
        self.leading = True
        self.cond.release()
        error: BaseException | None = RuntimeError("the commit was interrupted")
        try:
            self.commit([row for ticket in batch for row in ticket.rows])
            error = None
        except Exception as exc:  # noqa: BLE001 - every waiter of the group is told
            log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), exc)
            error = exc
        finally:  # an interruption (BaseException) fails the group too, and goes on up
            self.cond.acquire()
            self.leading = False
            self.settle(batch, error)

    def take_batch(self) -> list[Ticket]:
        batch, count = [], 0
        while self.waiting and (not batch or count + len(self.waiting[0].rows) <= self.max_batch):
            ticket = self.waiting.pop(0)
            batch.append(ticket)
            count += len(ticket.rows)
        return batch

    def settle(self, batch: list[Ticket], error: BaseException | None) -> None:
        for ticket in batch:
            ticket.done, ticket.error = True, error
        self.cond.notify_all()

    def commit(self, rows: list) -> None:
        """Append `rows` in one transaction and wait for it (SQLite's leaders; tests on both)."""
        self.ensure_connection()
        try:
            if self.pipelined:
                append_events(self.conn, rows)
            else:
                self.commit_sqlite(rows)
        except Exception:
            self.drop_connection()
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

    # -- PostgreSQL: pipelined -------------------------------------------------------------

    def send(self) -> None:
        """Send what waits as one append (condition held, nothing in flight). A connection is
        opened with the condition released - a database that does not answer must time out
        the requests that wait, not hold every other one at the lock - the batch marked in
        flight and being read meanwhile, so that no one else sends or reads."""
        batch = self.take_batch()
        self.inflight, self.reading = batch, True
        error: BaseException | None = RuntimeError("the send was interrupted")
        try:
            if self.pipe is None:
                self.cond.release()
                try:
                    self.ensure_connection()
                finally:
                    self.cond.acquire()
            self.inflight_deadline = time.monotonic() + self.timeout  # statement_timeout's
            self.pipe.send(driver.json_rows([item for ticket in batch for item in ticket.sendable]),
                           self.inflight_deadline)
            error = None
        except Exception as exc:  # noqa: BLE001 - every waiter of the group is told
            log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), exc)
            error = exc
        finally:
            self.reading = False
            if error is not None:
                self.inflight = None
                self.drop_connection()
                self.settle(batch, error)
            else:
                self.cond.notify_all()

    def read_answer(self, deadline: float) -> None:
        """Read the answer to the append in flight (condition held; released while reading),
        settle its group and send what gathered meanwhile. A reader whose own time runs out
        first hands the reading back: the group's time is the append's, not this request's."""
        batch, self.reading = self.inflight, True
        until = min(deadline, self.inflight_deadline)
        self.cond.release()
        error: BaseException | None = RuntimeError("reading the answer was interrupted")
        try:
            self.pipe.receive(until)
            error = None
        except TimeoutError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - every waiter of the group is told
            log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), exc)
            error = exc
        finally:
            self.cond.acquire()
            self.reading = False
            if isinstance(error, TimeoutError) and time.monotonic() < self.inflight_deadline:
                self.cond.notify_all()  # this request's time is up, not the group's: another reads on
                return
            if isinstance(error, TimeoutError):
                log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), error)
            self.inflight = None
            if error is None:
                self.commits += 1
                self.since_fold += sum(len(ticket.rows) for ticket in batch)
            else:
                self.drop_connection()  # its state is unknown (the answer may still come)
            self.settle(batch, error)
            if self.waiting:
                self.send()

    def kick(self) -> None:
        """Send what waits if nothing is in flight: a request that gave up waiting may leave
        its later events behind, and an idle process would otherwise never send them."""
        if self.pipelined:
            with self.cond:
                if self.inflight is None and not self.reading and self.waiting:
                    self.send()

    def counted(self, appended: int) -> None:
        """Events this process appended elsewhere (a request's writes): they wait to be folded too."""
        if self.pipelined:
            self.since_fold += appended  # a lost count under a race only delays a fold

    def fold_if_due(self) -> int:
        """After a response has gone out: fold search values if this process appended FOLD_AT
        events since it last did (PostgreSQL; SQLite's appenders fold as they append)."""
        with self.cond:
            if not self.pipelined or self.folding or self.since_fold < FOLD_AT:
                return 0
            self.folding, self.since_fold = True, 0
        try:
            return fold_waiting(self.engine)
        finally:
            self.folding = False

    # -- the connection ----------------------------------------------------------------------

    def after_fork(self) -> None:
        """A forked child starts afresh: its parent's lock, groups and connection are not its
        own. The parent's connection is kept referenced, never closed: closing it here would
        end the parent's session on the socket both share."""
        if self.pid != os.getpid():
            self.inherited.append(self.conn)
            self.cond = threading.Condition()
            self.conn = self.pipe = self.inflight = None
            self.waiting, self.reading, self.leading, self.folding = [], False, False, False
            self.pid = os.getpid()

    def ensure_connection(self) -> None:
        # One connection, used by one leader at a time (a pool checkout per group cost ~0.1
        # ms on SQLite); after an error it is dropped and the next group opens another.
        if self.conn is None:
            conn = self.connect()
            try:
                pipe = Pipe(driver.raw_connection(conn)) if self.pipelined else None
            except Exception:
                conn.close()
                raise
            self.conn, self.pipe = conn, pipe

    def drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing more to lose
                pass
        self.conn = self.pipe = None

    def connect(self):
        """The committer's own connection (out of the pool), whose lock waits end within the
        timeout: a leader stuck behind another process's lock must fail its group, not hang."""
        conn = self.engine.connect().execution_options(**{WRITE_OPTION: True})
        conn.detach()  # session settings below must not reach the pool's other users
        millis = int(self.timeout * 1000)
        if self.pipelined:
            conn.exec_driver_sql(f"SET lock_timeout = {millis}")
            conn.exec_driver_sql(f"SET statement_timeout = {millis}")
            conn.commit()
            # On psycopg itself: SQLAlchemy's isolation switch cannot reset a detached connection.
            driver.raw_connection(conn).autocommit = True
        else:  # on the sqlite3 connection itself: through SQLAlchemy it would BEGIN IMMEDIATE first
            driver.raw_connection(conn).execute(f"PRAGMA busy_timeout = {millis}")
        return conn


# The append in libpq's own placeholders, prepared once per connection: the pipe sends it
# below psycopg (prepared, an append after a few idle milliseconds took 0.03-0.1 ms less).
APPEND_SQL_LIBPQ = APPEND_SQL.replace("%s", "$1").encode("ascii")
APPEND_STATEMENT = b"fhirimg_audit_append"


class AppendFailed(Exception):
    """PostgreSQL refused the append (its message)."""


class Pipe:
    """One statement at a time on a psycopg connection's libpq handle, sent without waiting
    for its answer (psycopg's own execute waits). The handle is psycopg's, in non-blocking
    mode; nothing else uses the connection while the committer owns it."""

    def __init__(self, dbapi_conn):
        from psycopg import pq
        self.pg = dbapi_conn.pgconn
        prepared = self.pg.prepare(APPEND_STATEMENT, APPEND_SQL_LIBPQ)
        if prepared.status != pq.ExecStatus.COMMAND_OK:
            raise AppendFailed(prepared.error_message.decode("utf-8", "replace").strip())

    def send(self, param: str, deadline: float) -> None:
        self.pg.send_query_prepared(APPEND_STATEMENT, [param.encode("utf-8")])
        while self.pg.flush():  # 1: more to send (a large group on a full socket buffer)
            if self.ready(select.POLLOUT | select.POLLIN, deadline) & select.POLLIN:
                self.pg.consume_input()  # what the server sends meanwhile (libpq's advice)

    def receive(self, deadline: float) -> None:
        """The answer, in full (every result, up to the end of the statement): returns once
        PostgreSQL has committed; AppendFailed or TimeoutError otherwise. Each wait for the
        socket is bounded; libpq keeps what was read, so a later call goes on from there."""
        from psycopg import pq
        results = []
        while True:
            self.pg.consume_input()
            if self.pg.is_busy():
                self.ready(select.POLLIN, deadline)
                continue
            result = self.pg.get_result()  # not busy: does not block
            if result is None:
                break
            results.append(result)
        if not results or results[0].status != pq.ExecStatus.TUPLES_OK:
            message = results[0].error_message.decode("utf-8", "replace") if results else "no answer"
            raise AppendFailed(message.strip())

    def ready(self, events: int, deadline: float) -> int:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("PostgreSQL did not answer the audit append in time")
        poller = select.poll()
        poller.register(self.pg.socket, events | select.POLLERR | select.POLLHUP)
        return sum(mask for _, mask in poller.poll(remaining * 1000))
