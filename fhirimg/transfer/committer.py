"""Placing checked instances in the blob store on a thread of its own, in groups.

Making one instance durable (fdatasync of the file, rename, directory fsync, index row)
costs about 1.3 ms for a 0.5 MB file on a disk that sustains ~450 MB/s of synced
writes. Done by the series readers, that time stalls their network reads; measured on
1 000 such files it made the transfer 1.6x slower than reading and syncing in
overlap. So the readers hand each checked file over and go on reading, and one
committer drains whatever has queued (up to a group) and commits it with
``BlobStore.commit_many``: under load the groups grow and share directory fsyncs and
database commits; when the queue is empty the first instance is placed at once (time
to first instance).

The committer works in two stages on two threads: one places a group (fsync, rename:
the disk's work, GIL released), the other indexes what has been placed (one transaction:
index rows and, for a retrieve, the ImagingStudy's merge: Python's work), so the next
group's syncs run beside this group's transaction. When indexing falls behind, the
groups placed meanwhile are indexed together: on 1 000 instances of 0.5 MB the store
step was bound by the one thread doing both (busy 91% of the transfer).

A reader that needs to know what is stored (before its per-instance fallback, at the
end of a response) calls ``flush`` for its series: it waits for that series' items
and raises the error that placing them met, if any, after putting their SOP Instance
UIDs back into the series' wanted set so that the fallback fetches them again.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .blobstore import BlobStore, InstanceRecord, StagedFile

GROUP_MAX_INSTANCES = 32
GROUP_MAX_BYTES = 64 << 20
QUEUE_INSTANCES = 64  # checked files waiting on disk (not in memory) before readers wait
PLACED_GROUPS = 32
# After an index transaction the indexer waits as long as it took (at most this long) before
# the next: a retrieve's transaction merges the group into its ImagingStudy, whose cost grows
# with the study (15 ms at 30 instances, 60-230 ms at 1 000), so back-to-back transactions of
# a few instances each kept the GIL from the readers (90 transactions on 1 000 instances,
# busy all along). Waiting lets groups gather: instances show in QIDO-RS and FHIR together
# (one transaction) at most twice the transaction's time later.
INDEX_PAUSE_MAX = 0.25

_STOP = object()


class SeriesTicket:
    """Per-series bookkeeping the committer shares with that series' reader."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.in_flight = 0
        self.error: BaseException | None = None


class GroupCommitter:
    """Two threads placing, then indexing, (staged file, record) pairs handed over by the readers."""

    def __init__(self, blobstore: BlobStore, on_placed: Callable[[InstanceRecord], None],
                 max_instances: int = GROUP_MAX_INSTANCES, max_bytes: int = GROUP_MAX_BYTES,
                 queue_instances: int = QUEUE_INSTANCES):
        self.blobstore, self.on_placed = blobstore, on_placed
        self.max_instances, self.max_bytes = max_instances, max_bytes
        self.queue: queue.Queue = queue.Queue(maxsize=queue_instances)
        # Placed groups waiting for their index transaction: at most a few, so that placing
        # never runs far ahead of what the database has (each waits as files on disk).
        self.placed: queue.Queue = queue.Queue(maxsize=PLACED_GROUPS)
        self.changed = threading.Condition()
        self._flushing = 0  # readers waiting in flush: the indexer does not pause for them
        self._closing = False
        self.busy = 0.0  # seconds in which either stage was at work (the store step, beside step 3)
        self._active, self._since = 0, 0.0
        self.thread = threading.Thread(target=self._run, name="blob-committer", daemon=True)
        self.indexer = threading.Thread(target=self._run_indexer, name="blob-indexer", daemon=True)
        self.thread.start()
        self.indexer.start()

    def submit(self, ticket: SeriesTicket, staged: StagedFile, record: InstanceRecord) -> None:
        """Hand over a checked file; blocks only while the queue is full."""
        with self.changed:
            ticket.in_flight += 1
        self.queue.put((ticket, staged, record))

    def flush(self, ticket: SeriesTicket) -> None:
        """Wait until every file of this series handed over so far is placed or failed."""
        with self.changed:
            self._flushing += 1
            self.changed.notify_all()
            try:
                self.changed.wait_for(lambda: ticket.in_flight == 0)
            finally:
                self._flushing -= 1
            error, ticket.error = ticket.error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Place and index what is still queued, then stop both threads."""
        with self.changed:
            self._closing = True
            self.changed.notify_all()
        self.queue.put(_STOP)
        self.thread.join()
        self.indexer.join()

    def _run(self) -> None:
        while True:
            group, stop = self._next_group()
            if group:
                self._place(group)
            if stop:
                self.placed.put(_STOP)
                return

    def _next_group(self) -> tuple[list, bool]:
        """Block for one item, then take whatever else is already queued, up to a group."""
        first = self.queue.get()
        if first is _STOP:
            return [], True
        group, size = [first], first[1].size
        while len(group) < self.max_instances and size < self.max_bytes:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return group, True
            group.append(item)
            size += item[1].size
        return group, False

    def _place(self, group: list) -> None:
        with self._working():
            try:
                placed = self.blobstore.place([(staged, record) for _, staged, record in group])
            except BaseException as exc:  # handed to the readers: the committer itself goes on
                self._settle(group, [], exc)
                return
        self.placed.put((group, placed))

    def _run_indexer(self) -> None:
        while True:
            batch, stop = self._next_placed()
            if batch:
                started = time.perf_counter()
                self._index(batch)
                if not stop:  # let the next groups gather (INDEX_PAUSE_MAX), unless a reader waits
                    with self.changed:
                        self.changed.wait_for(lambda: self._flushing or self._closing,
                                              min(time.perf_counter() - started, INDEX_PAUSE_MAX))
            if stop:
                return

    def _next_placed(self) -> tuple[list, bool]:
        """Block for one placed group, then take the others already placed (one transaction)."""
        first = self.placed.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while True:
            try:
                item = self.placed.get_nowait()
            except queue.Empty:
                return batch, False
            if item is _STOP:
                return batch, True
            batch.append(item)

    def _index(self, batch: list) -> None:
        group = [item for placed_group, _ in batch for item in placed_group]
        placed = [record for _, records in batch for record in records]
        error: BaseException | None = None
        with self._working():
            try:
                self.blobstore.index_placed(placed)
            except BaseException as exc:  # placed but not indexed: the next arrival finds the object
                error, placed = exc, []
        for record in placed:
            self.on_placed(record)
        self._settle(group, placed, error)

    def _settle(self, group: list, placed: list[InstanceRecord], error: BaseException | None) -> None:
        """Tell the readers: what was not placed and indexed goes back to its series' wanted set."""
        placed_uids = {record.sop_uid for record in placed}
        with self.changed:
            for ticket, _, record in group:
                if record.sop_uid not in placed_uids:
                    ticket.wanted.add(record.sop_uid)  # fetched again by the fallback
                    ticket.error = ticket.error or error
                ticket.in_flight -= 1
            self.changed.notify_all()

    @contextmanager
    def _working(self) -> Iterator[None]:
        """Count the time in which at least one stage works (``busy``)."""
        with self.changed:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            yield
        finally:
            with self.changed:
                self._active -= 1
                if self._active == 0:
                    self.busy += time.perf_counter() - self._since
