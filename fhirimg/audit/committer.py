"""Group commit of read and query events: durable before the response, cheap under load.

A request hands its events to the process's committer and waits. One thread appends
everything waiting in one transaction, commits, and wakes the requests it carried; events
handed in meanwhile go in the next commit. Under load a commit carries the events of many
requests, so each pays for a fraction of a commit; alone, a request waits for one commit
and no timer (there is no fixed delay to gather a batch).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from ..store.engine import WRITE_OPTION
from .chain import append_events

log = logging.getLogger("fhirimg.audit")


class AuditUnavailable(Exception):
    """The events could not be made durable (in time): the request must not be answered."""


@dataclass
class Ticket:
    rows: list
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, engine, max_batch: int = 1000, timeout: float = 10.0):
        self.engine = engine
        self.max_batch = max_batch
        self.timeout = timeout
        self.waiting: list[Ticket] = []
        self.cond = threading.Condition()
        self.owner_pid = 0  # the thread belongs to the process that started it (gunicorn forks)
        self.commits = 0  # how many transactions carried events (bench and tests read it)

    def record(self, rows: list[tuple[dict, str | None, int]]) -> None:
        """Block until `rows` are committed; AuditUnavailable if they could not be."""
        if not rows:
            return
        ticket = Ticket(rows)
        with self.cond:
            self.ensure_thread()
            self.waiting.append(ticket)
            self.cond.notify()
        if not ticket.done.wait(self.timeout):
            raise AuditUnavailable(f"the audit trail did not commit within {self.timeout} s")
        if ticket.error is not None:
            raise AuditUnavailable(str(ticket.error)) from ticket.error

    def ensure_thread(self) -> None:
        if self.owner_pid != os.getpid():
            self.owner_pid = os.getpid()
            self.waiting = []
            threading.Thread(target=self.run, name="fhirimg-audit-commit", daemon=True).start()

    def take_batch(self) -> list[Ticket]:
        with self.cond:
            while not self.waiting:
                self.cond.wait()
            batch, count = [], 0
            while self.waiting and (not batch or count + len(self.waiting[0].rows) <= self.max_batch):
                ticket = self.waiting.pop(0)
                batch.append(ticket)
                count += len(ticket.rows)
            return batch

    def run(self) -> None:
        while True:
            batch = self.take_batch()
            error = None
            try:
                self.commit([row for ticket in batch for row in ticket.rows])
            except Exception as exc:  # noqa: BLE001 - every waiter is told, the thread goes on
                log.error("audit events not recorded (%d requests will answer 503): %s", len(batch), exc)
                error = exc
            for ticket in batch:
                ticket.error = error
                ticket.done.set()

    def commit(self, rows: list) -> None:
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            append_events(conn, rows)
        self.commits += 1
