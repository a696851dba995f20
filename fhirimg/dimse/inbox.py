"""Instances the listener has acknowledged and not yet stored: durable files, stored in groups.

A C-STORE is answered with success once its data set is durable here: fsynced and renamed
into ``<blob root>/.dimse-inbox`` (and that directory fsynced). A committer thread then
stores whatever has gathered (up to ``GROUP_MAX_INSTANCES`` / ``GROUP_MAX_BYTES``) with one
``Ingest.store`` call per calling node: one transaction and one ImagingStudy version per
study and group, however many associations the instances came on. Waiting for that commit
before answering would cost a storescu, which sends one instance after the other, a
transaction and an ImagingStudy version per instance: 45 instances/s against 290/s for 500
small instances on one association (and 500 ImagingStudy versions against a handful).

The inbox copy is only removed once the ingest has stored it (or found the same copy
held); the ingest gets a hard link to it, so whatever it does with its staged file (rename
into the blob store, discard after a failed transaction) never touches the inbox copy.
On start ``recover`` queues whatever a crash left in the inbox: acknowledged instances are
never lost. One listener per blob root owns the inbox (a lock file beside it), so that two
never store, or recover, the same receipts.

A failure that may pass (database down, disk full) is retried with backoff, and meanwhile
new instances are refused (A700) rather than acknowledged. A refusal by the ingest after
the answer (headers that make no valid ImagingStudy; duplicates are caught before it)
moves the copy to ``.dimse-refused``, audited and logged as an error: the peer was told
success, a person has to look.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from ..audit.events import Actor
from ..push.ingest import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    Ingest,
    InstanceResult,
    Refused,
)
from ..transfer.blobstore import InstanceRecord, StagedFile, fsync_directory
from .refusals import actor_of

log = logging.getLogger("fhirimg.dimse")

INBOX_DIR = ".dimse-inbox"
LOCK_FILE = ".dimse-inbox.lock"
REFUSED_DIR = ".dimse-refused"
GROUP_MAX_INSTANCES = 256
GROUP_MAX_BYTES = 64 << 20
# After the first instance of a group, more may gather for 3x as long as the last store took,
# within these bounds: the committer then takes at most about a quarter of the process's
# time (it shares the GIL with the associations), and a group waits no more than LINGER_MAX.
LINGER_MIN, LINGER_MAX, LINGER_FACTOR = 0.1, 2.0, 3.0
MAX_PENDING = 512  # acknowledged, not yet stored: beyond this a C-STORE waits for room ...
MAX_PENDING_BYTES = 1 << 30
ROOM_WAIT = 20.0  # ... this long, then is refused (A700)
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
TRANSIENT = (PROCESSING_FAILURE, OUT_OF_RESOURCES)
SERVICE = "C-STORE"


@dataclass
class Receipt:
    """One acknowledged instance: its durable copy, what the check found, who sent it."""

    path: Path
    staged: StagedFile  # its hash, size and head; ``path`` is re-pointed at a fresh link per attempt
    record: InstanceRecord
    actor: Actor
    attempts: int = 0
    due: float = 0.0


class Inbox:
    """The durable receipts and the one thread that stores them."""

    def __init__(self, ingest: Ingest, on_refused: Callable[[Actor, int, str, InstanceRecord | None], None]):
        self.ingest, self.on_refused = ingest, on_refused
        root = ingest.blobstore.root
        self.directory, self.refused_directory = root / INBOX_DIR, root / REFUSED_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.queue: deque[Receipt] = deque()
        self.delayed: list[Receipt] = []
        self.pending: dict[Path, Receipt] = {}  # queued, delayed or being stored
        self.pending_by_sop: dict[str, list[Receipt]] = {}
        self.pending_studies: dict[str, int] = {}
        self.pending_bytes = 0
        self.failing: str | None = None  # why the last attempt failed, while it has not passed
        self.closing = False
        self.draining = 0  # threads waiting in drain()
        self.idle = False  # the committer waits for a first instance (enqueue wakes it)
        self.changed = threading.Condition()
        self.stored_groups = 0  # store calls made (the bench and tests read it)
        self.last_store = 0.0  # seconds the last store call took
        self.thread: threading.Thread | None = None
        self.lock_file = None

    # -- the listener's side -------------------------------------------------------------------
    def start(self) -> None:
        """Take the inbox (one listener per blob root), queue what the last run left, store."""
        self.lock_file = open(self.directory.parent / LOCK_FILE, "a+b")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.close()
            raise RuntimeError(f"another DICOM listener is using {self.directory}: one listener per blob root") \
                from None
        self.recover()
        self.thread = threading.Thread(target=self._run, name="dimse-inbox", daemon=True)
        self.thread.start()

    def accept(self, staged: StagedFile, record: InstanceRecord, actor: Actor) -> None:
        """Make a checked instance durable in the inbox and queue it; Refused (A700) when the
        store is failing or no room frees up in time. Returns only once it is durable."""
        self.wait_for_room(staged.size)
        if staged.syncing is not None:  # fsync the data ...
            staged.syncing.result()
        staged.finish()
        path = self.directory / f"{time.time_ns():x}-{uuid.uuid4().hex}.dcm"
        os.rename(staged.path, path)
        staged.path = path  # a failure from here on discards the inbox copy: the answer is a failure
        fsync_directory(self.directory)  # ... and the name: the answer may now be success
        self.enqueue(Receipt(path, staged, record, actor))

    def wait_for_room(self, size: int) -> None:
        deadline = time.monotonic() + ROOM_WAIT
        with self.changed:
            while True:
                if self.failing:
                    raise Refused(OUT_OF_RESOURCES, f"instances cannot be stored now ({self.failing}); retry later")
                if len(self.pending) < MAX_PENDING and self.pending_bytes + size <= MAX_PENDING_BYTES:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closing:
                    raise Refused(OUT_OF_RESOURCES, "too many instances are waiting to be stored; retry later")
                self.changed.wait(remaining)

    def enqueue(self, receipt: Receipt) -> None:
        with self.changed:
            self.pending[receipt.path] = receipt
            self.pending_bytes += receipt.staged.size
            self.pending_by_sop.setdefault(receipt.record.sop_uid, []).append(receipt)
            study = receipt.record.study_uid
            self.pending_studies[study] = self.pending_studies.get(study, 0) + 1
            self.queue.append(receipt)
            if self.idle or len(self.queue) >= GROUP_MAX_INSTANCES:
                self.changed.notify_all()  # (not per instance: a wake-up per instance cost 5 % CPU)

    def held_copies(self, sop_uid: str) -> list[tuple[str, str]]:
        """(sha256, study UID) of the acknowledged copies of an instance not stored yet."""
        with self.changed:
            return [(r.staged.sha256, r.record.study_uid) for r in self.pending_by_sop.get(sop_uid, ())]

    def holds_study(self, study_uid: str) -> bool:
        with self.changed:
            return study_uid in self.pending_studies

    def drain(self, timeout: float) -> bool:
        """Wait until every acknowledged instance is settled (stored, set aside or waiting
        for a retry); False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            self.draining += 1  # a lingering group is cut short: someone waits for it
            self.changed.notify_all()
            try:
                while len(self.pending) > len(self.delayed):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.changed.wait(remaining)
            finally:
                self.draining -= 1
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Store what is queued (not what waits for a retry: it stays for the next start), then stop."""
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("dimse: the inbox did not drain in %.0f s; the rest is stored at the next start", timeout)
        if self.lock_file is not None:
            self.lock_file.close()  # releases the lock
            self.lock_file = None

    # -- recovery ------------------------------------------------------------------------------
    def recover(self) -> int:
        """Queue what a previous run acknowledged and did not store; returns how many."""
        found = sorted(self.directory.glob("*.dcm"))
        for path in found:
            actor = actor_of(source_ae(path), self.ingest.repo.site, None)
            try:
                staged, record = self.reread(path)
            except Refused as exc:
                self.set_aside(path, actor, exc.code, exc.reason, None)
                continue
            self.enqueue(Receipt(path, staged, record, actor))
        if found:
            log.info("dimse: %d acknowledged instance(s) from the last run are being stored", len(found))
        return len(found)

    def reread(self, path: Path) -> tuple[StagedFile, InstanceRecord]:
        """Hash and check an inbox file as if it had just arrived (through a staging copy,
        dropped at once: only its hash, size and head are kept)."""
        staged = self.ingest.open_staging()
        try:
            with open(path, "rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    staged.write(block)
            staged.file.close()
            return staged, self.ingest.check(staged)
        finally:
            staged.path.unlink(missing_ok=True)

    # -- the committer -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            group = self.next_group()
            if group is None:
                return
            by_actor: dict[Actor, list[Receipt]] = {}
            for receipt in group:
                by_actor.setdefault(receipt.actor, []).append(receipt)
            for actor, receipts in by_actor.items():
                self.store(actor, receipts)

    def next_group(self) -> list[Receipt] | None:
        """Block for work; then take what is queued, one copy per SOP Instance UID (a second
        copy waits for the next group, so the ingest sees every copy in arrival order)."""
        with self.changed:
            while True:
                self.requeue_due()
                if self.queue:
                    break
                if self.closing:
                    return None
                next_due = min((r.due for r in self.delayed), default=None)
                self.idle = True
                self.changed.wait(None if next_due is None else max(0.0, next_due - time.monotonic()))
                self.idle = False
            self.linger()
            group, uids, size, skipped = [], set(), 0, deque()
            while self.queue and len(group) < GROUP_MAX_INSTANCES and size < GROUP_MAX_BYTES:
                receipt = self.queue.popleft()
                if receipt.record.sop_uid in uids:
                    skipped.append(receipt)
                    continue
                uids.add(receipt.record.sop_uid)
                group.append(receipt)
                size += receipt.staged.size
            self.queue.extendleft(reversed(skipped))
            return group

    def linger(self) -> None:
        """Let a group gather for a while (called with the condition held). The
        answers do not wait for the commit, so this costs visibility, not throughput, and
        saves a transaction and an ImagingStudy version per instance of a steady stream."""
        deadline = time.monotonic() + min(LINGER_MAX, max(LINGER_MIN, LINGER_FACTOR * self.last_store))
        while not (self.closing or self.draining) and len(self.queue) < GROUP_MAX_INSTANCES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.changed.wait(remaining)

    def requeue_due(self) -> None:
        now = time.monotonic()
        due = [r for r in self.delayed if r.due <= now]
        if due:
            self.delayed = [r for r in self.delayed if r.due > now]
            self.queue.extendleft(reversed(due))

    def store(self, actor: Actor, receipts: list[Receipt]) -> None:
        started = time.monotonic()
        try:
            items = [(self.linked(receipt), receipt.record) for receipt in receipts]
            results = self.ingest.store(items, actor, SERVICE)
        except Exception as exc:  # Ingest.store fails studies, not calls: this is a bug or the disk
            log.exception("dimse: storing %d acknowledged instance(s) failed", len(receipts))
            results = [InstanceResult(r.record.sop_class_uid, r.record.sop_uid, r.record.study_uid,
                                      r.record.series_uid, "failed", PROCESSING_FAILURE, str(exc)) for r in receipts]
        self.stored_groups += 1
        self.last_store = time.monotonic() - started
        for receipt, result in zip(receipts, results):
            receipt.staged.discard()  # the link, where the ingest left it
            self.settle(receipt, result)

    def linked(self, receipt: Receipt) -> StagedFile:
        """A fresh name in staging for the inbox copy, for the ingest to move or drop."""
        link = self.ingest.blobstore.staging / f"part-{uuid.uuid4().hex}.tmp"
        os.link(receipt.path, link)
        receipt.staged.path = link
        return receipt.staged

    def settle(self, receipt: Receipt, result: InstanceResult) -> None:
        if result.ok:
            receipt.path.unlink(missing_ok=True)  # stored (or the same copy held): the receipt is spent
            self.done(receipt)
        elif result.code in TRANSIENT:
            receipt.attempts += 1
            receipt.due = time.monotonic() + min(RETRY_MAX, RETRY_FIRST * 2 ** (receipt.attempts - 1))
            log.error("dimse: acknowledged instance %s not stored yet (%s), retry %d in %.0f s", receipt.record.sop_uid,
                      result.reason, receipt.attempts, receipt.due - time.monotonic())
            with self.changed:
                self.failing = result.reason or "the store is failing"
                self.delayed.append(receipt)
        else:
            self.set_aside(receipt.path, receipt.actor, result.code, result.reason, receipt.record)
            self.done(receipt)

    def set_aside(self, path: Path, actor: Actor, code: int, reason: str, record: InstanceRecord | None) -> None:
        """The ingest will not store an acknowledged instance: keep it aside for a person."""
        self.refused_directory.mkdir(exist_ok=True)
        os.replace(path, self.refused_directory / path.name)
        log.error("dimse: acknowledged instance %s refused by the store (%04X: %s); kept in %s",
                  record.sop_uid if record else path.name, code, reason, self.refused_directory)
        self.on_refused(actor, code, reason, record)

    def done(self, receipt: Receipt) -> None:
        """Settled: the store answered, so it works again (new instances are accepted)."""
        with self.changed:
            if self.pending.pop(receipt.path, None) is not None:
                self.pending_bytes -= receipt.staged.size
                forget(self.pending_by_sop, receipt.record.sop_uid, receipt)
                study = receipt.record.study_uid
                self.pending_studies[study] -= 1
                if not self.pending_studies[study]:
                    del self.pending_studies[study]
            self.failing = None
            self.changed.notify_all()


def forget(index: dict[str, list[Receipt]], key: str, receipt: Receipt) -> None:
    receipts = index.get(key, [])
    if receipt in receipts:
        receipts.remove(receipt)
    if not receipts:
        index.pop(key, None)


def source_ae(path: Path) -> str:
    """The calling AE that sent an inbox file (its file meta's Source Application Entity Title)."""
    try:
        return str(read_file_meta_info(path).get("SourceApplicationEntityTitle", "") or "").strip()
    except Exception:  # noqa: BLE001 - an unreadable meta is the check's to refuse
        return ""
