"""Step 3 — pixel data: WADO-RS retrieve per series, streamed into the blob store (PS3.18 §10.4).

Near the source, one multipart GET per series (bounded parallelism across series) is as
fast as a plain GET of the whole study and puts both cores to work; a far source's first
transfer is one GET of the whole study instead (``stream_study``; see
pipeline.streams_whole_study for why), and the series requests fetch only what it did not
deliver. A GET per instance costs ~3 ms each at the source and runs at 1/5-1/8 of that,
so it is only the fallback: for a series whose response broke off, and for the few
instances a resumed transfer still lacks. Every part goes to a
staging file, is checked with pydicom, then renamed into place; instances already
stored are never fetched again. Checked files are placed in the store by a committer
thread (see committer.py) so that the readers never wait on the disk.

What a hostile source can make one Task cost is bounded (budget.py, guard.py): a part is
cut at the size its metadata announced and that instance is not asked for again, an answer
brings few more parts than the instances asked for, and every body is watched for the
Task's cancel, deadline, throughput floor and byte budget while it arrives.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests
import urllib3.exceptions

from .blobstore import BlobStore, InstanceRecord, StagedFile
from .budget import part_allowance
from .client import SourceError, TransferClient, arrived_chunks, build_url
from .committer import GroupCommitter, SeriesTicket
from .dicomcheck import ElementJsonCache, Expectation, RejectedPart, inspect_staged, require_expected_uids
from .guard import Abandoned, Cancelled, GuardLimits, TaskGuard, first_cause
from .multipart import MultipartError, Part, PartTooLarge, open_body_reader
from .qido import Rejection, SourceSeries, SourceStudy

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK_BYTES = 1 << 20
# Parts an answer may bring beyond the instances asked for (one added to the series since it
# was listed, one sent twice); past that it is junk, and each junk part costs a staging file
# and a recorded rejection: the rest of the answer is left to the per-instance fallback.
EXTRA_PARTS = 8
# Parts of a study stream that may come before step 1's listing (each checked and, if it
# passes, kept aside to be matched with it: a staging file, its header in memory), and the
# bytes those may hold; past either the stream waits for the listing.
PENDING_PARTS = 64
PENDING_BYTES = 512 << 20
BROKEN_BODY = (requests.RequestException, urllib3.exceptions.HTTPError, MultipartError, SourceError, OSError)


@dataclass
class RetrieveOptions:
    series_parallelism: int = 4
    stream_study_rtt: float = 0.005  # seconds: a source this far gets a first transfer as one stream
    instance_attempts: int = 3
    per_instance_max: int = 8  # resume with at most this many missing: fetch them one by one
    max_instance_bytes: int = 4 << 30  # a part that announces nothing may bring this much, in all attempts
    max_task_bytes: int = 64 << 30  # the most one Task run may receive as pixel data
    min_throughput: int = 64 * 1024  # bytes/s a response must average over throughput_window (0: off)
    throughput_window: float = 30.0
    task_deadline: float = 7200.0  # seconds for one run of a Task (0: none)

    def guard_limits(self) -> GuardLimits:
        return GuardLimits(self.min_throughput, self.throughput_window, self.task_deadline)


@dataclass
class RetrieveOutcome:
    """Counters of step 3, shared by the series threads (update under ``lock``)."""

    stored: int = 0
    skipped: int = 0
    bytes: int = 0
    study_requests: int = 0
    series_requests: int = 0
    instance_requests: int = 0
    fallbacks: int = 0
    first_instance_at: float | None = None
    store_seconds: float = 0.0  # the committer's time making objects durable and indexing them
    rejections: list[Rejection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_stored(self, size: int, now: float) -> None:
        """Count one placed instance (called by the committer thread)."""
        with self.lock:
            self.stored += 1
            self.bytes += size
            if self.first_instance_at is None:
                self.first_instance_at = now

    def reject(self, rejection: Rejection) -> None:
        """Record a refusal once: a study stream and the series request after it may refuse
        the same instance for the same reason."""
        with self.lock:
            if rejection.sop_uid is None or not any(
                    r.sop_uid == rejection.sop_uid and r.reason == rejection.reason for r in self.rejections):
                self.rejections.append(rejection)


@dataclass
class SeriesJob:
    """What one series still needs: ``wanted`` shrinks as instances are handed to the committer."""

    study_uid: str
    series: SourceSeries
    wanted: set[str]
    expected: frozenset[str] = frozenset()  # the instances known when the job was planned
    ticket: SeriesTicket = field(init=False)
    listing: Future | None = None  # the series' QIDO, still under way when the job was planned

    def __post_init__(self):
        self.ticket = SeriesTicket(self.wanted)

    def listed_so_far(self) -> frozenset[str]:
        """The listed instances without waiting: the listing's answer as soon as it is in (the
        first part's allowance needs it before that part ends), else what the job knows."""
        listing = self.listing
        if listing is not None and listing.done() and listing.exception() is None:
            return frozenset(listing.result())
        return self.expected

    def await_listing(self) -> frozenset[str]:
        """The instances step 1 lists, once it has (its error if it failed). A job planned
        before the listing holds nothing of the series yet, so all of them are wanted."""
        if self.listing is not None:
            listing, self.listing = self.listing, None
            self.expected = frozenset(listing.result())
            self.wanted.update(self.expected)  # the set the ticket shares
        return self.expected


@dataclass
class Allowance:
    """What the next part of one request may bring before it is cut (PartTooLarge).

    ``largest`` is asked as the part grows: the series' metadata may arrive meanwhile. When
    ``is_total`` (one instance asked for on its own) its attempts share it, so that retrying
    a part that broke off cannot multiply it.
    """

    largest: Callable[[], int]
    is_total: bool = False
    used: int = 0

    def __call__(self) -> int:
        return self.largest() - self.used

    def spend(self, size: int) -> None:
        if self.is_total:
            self.used += size


class Retriever:
    """Runs step 3 for one study with an HTTP client, a blob store and the Task's guard."""

    def __init__(self, client: TransferClient, blobstore: BlobStore, options: RetrieveOptions,
                 guard: TaskGuard):
        self.client, self.blobstore, self.options, self.guard = client, blobstore, options, guard
        self.monotonic = guard.monotonic
        self.outcome = RetrieveOutcome()
        self.committer: GroupCommitter | None = None
        self.json_cache = ElementJsonCache()

    def retrieve_study(self, study: SourceStudy, count_skipped: bool = True) -> RetrieveOutcome:
        """Fetch every instance of the study that is not stored yet.

        A second pass over the same study does not count what the first one stored as
        skipped (``count_skipped``).
        """
        jobs = [self.plan_series(study.study_uid, series, frozenset(series.instances), count_skipped)
                for series in study.series]
        jobs = [job for job in jobs if job.wanted]
        workers = max(1, min(self.options.series_parallelism, len(jobs)))
        with self.running():
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retrieve") as pool:
                futures = [pool.submit(self.retrieve_series_job, job) for job in jobs]
                errors = [f.exception() for f in futures]
        error = first_cause(errors)
        if error is not None:
            raise error
        return self.outcome

    @contextmanager
    def running(self) -> Iterator[None]:
        """The committer's lifetime: series may be retrieved (``retrieve_known_series``) inside."""
        self.committer = GroupCommitter(self.blobstore, self.placed)
        try:
            yield
        finally:
            self.committer.close()
            self.outcome.store_seconds += self.committer.busy

    def retrieve_known_series(self, study_uid: str, series: SourceSeries, expected: frozenset[str]) -> None:
        """Plan and fetch one series in the calling thread (inside ``running``)."""
        job = self.plan_series(study_uid, series, expected)
        if job.wanted:
            self.retrieve_series_job(job)

    def retrieve_while_listing(self, study_uid: str, series: SourceSeries,
                               list_series: Callable[[], frozenset[str]]) -> bool:
        """Ask for the series at once and list its instances (``list_series``, step 1) beside
        the request, when nothing of the series is held yet; False, doing nothing, otherwise.

        The listing used to come first: one round trip (on a WAN, 40-80 ms) before the
        series request left. Parts are checked against the listing, so the first one waits
        for it, holding its request's slot of the source's concurrency limit: at most that
        limit less one series do so at once (the others list first), or their listings could
        all wait for slots that only they would free. What the answer lacks is fetched
        instance by instance as before.
        """
        if self.blobstore.stored_sop_uids(study_uid, series.series_uid):
            return False
        with self.client.waiting_slot(series.base_url) as granted:
            if not granted:  # the listings need a slot of the source that no stream holds
                return False
            self.retrieve_listed_meanwhile(SeriesJob(study_uid, series, set()), list_series)
        return True

    def retrieve_listed_meanwhile(self, job: SeriesJob, list_series: Callable[[], frozenset[str]]) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="listing") as lister:
            job.listing = listing = lister.submit(list_series)
            try:
                self.retrieve_series(job)
            except Cancelled:
                self.guard.stop_event.set()
                raise
            finally:
                failed = listing.exception()  # waits for it: its error is the one to report
            if failed is not None:
                raise failed
        job.await_listing()  # an answer without parts never asked for it
        self.retrieve_series_job(job, series_done=True)

    def plan_series(self, study_uid: str, series: SourceSeries, expected: frozenset[str],
                    count_skipped: bool = True) -> SeriesJob:
        stored = self.blobstore.stored_sop_uids(study_uid, series.series_uid)
        wanted = set(expected) - stored
        with self.outcome.lock:
            self.outcome.skipped += (len(expected) - len(wanted)) if count_skipped else 0
        return SeriesJob(study_uid, series, wanted, expected)

    def retrieve_series_job(self, job: SeriesJob, series_done: bool = False) -> None:
        try:
            if not series_done and (len(job.wanted) > self.options.per_instance_max
                                    or len(job.wanted) == len(job.expected)):
                self.retrieve_series(job)
            self.retrieve_missing_instances(job)
        except Cancelled:
            self.guard.stop_event.set()
            raise

    def retrieve_series(self, job: SeriesJob) -> None:
        """One multipart GET for the series; a broken body leaves the rest to the fallback."""
        url = build_url(job.series.base_url, ["studies", job.study_uid, "series", job.series.series_uid])
        with self.outcome.lock:
            self.outcome.series_requests += 1
        try:
            allowance = Allowance(self.largest_part(job.series, job.listed_so_far))
            complete = self.read_multipart(url, job, None if job.listing else job.expected, allowance)
        except Abandoned:
            raise
        except BROKEN_BODY:  # a part cut at its allowance too: fetched alone, it is rejected at once
            complete = False
        if not complete and job.wanted:
            with self.outcome.lock:
                self.outcome.fallbacks += 1

    def stream_study(self, study_uid: str, base_url: str, jobs: Future) -> bool:
        """The whole study as one multipart GET, asked for before step 1 has listed it; True
        if the body ended with its closing delimiter.

        ``jobs`` resolves, once every series is listed, to each series' SeriesJob by Series
        Instance UID: parts are checked against those listings, so the first one waits for
        them (holding a slot of the source, as a series streamed before its listing does).
        Whatever the stream does not deliver stays in its job's ``wanted`` for the series and
        instance requests after it; a stream the source refuses or breaks off is not an error.
        """
        url = build_url(base_url, ["studies", study_uid])
        known: dict[str, SeriesJob] = {}
        with self.client.waiting_slot(base_url) as granted:
            if not granted:
                return False
            with self.outcome.lock:
                self.outcome.study_requests += 1
            try:
                return self.read_study(url, study_uid, jobs, known)
            except Abandoned:
                raise
            except BROKEN_BODY:
                return False

    def read_study(self, url: str, study_uid: str, jobs: Future, known: dict[str, SeriesJob]) -> bool:
        """Parts that arrive before the listing are checked at once and kept aside (see
        ListingMatch): the body is read on meanwhile, so that the connection's receive
        window opens as fast as the source sends (a reader that stopped for the listing cost
        ~3 round trips)."""
        allowance = Allowance(self.largest_in_study(known))
        match = ListingMatch(self, study_uid, jobs, known)
        with self.client.stream(url, ACCEPT_DICOM) as response:
            reader = open_body_reader(response.headers.get("Content-Type", ""),
                                      lambda headers: self.blobstore.open_staging(), allowance)
            chunks = self.guard.watch(arrived_chunks(response.raw, CHUNK_BYTES), charged=True)
            try:
                for part in reader.read(chunks):
                    if match.expectation is None and (match.failed or reader.part_count > PENDING_PARTS
                                                      or match.pending_bytes >= PENDING_BYTES):
                        try:
                            match.wait(self.guard.check)  # a failed listing raises here
                        except BaseException:
                            part.sink.discard()  # received, never to be checked: no staging file left
                            raise
                    if match.empty:  # step 1 listed nothing: nothing was asked for
                        part.sink.discard()
                        return False
                    expectation = match.expectation
                    checked = self.check_part(part, expectation)
                    if checked is not None:
                        match.offer(checked, expectation)
                    self.guard.check()
                    listed = match.expectation.sop_uids if match.expectation is not None else None
                    if listed is not None and reader.part_count >= len(listed) + EXTRA_PARTS:
                        raise MultipartError(f"{reader.part_count} parts for the {len(listed)} instances listed")
                if match.pending:
                    match.wait(self.guard.check)
            finally:
                match.close()  # checked parts are kept if the listing is in, even if the body broke off
                discard_open_sinks(reader)
                self.flush_all([job.ticket for job in list(known.values())])
            return reader.is_closed

    def flush_all(self, tickets: list[SeriesTicket]) -> None:
        """Flush every ticket, then raise the first error one of them met."""
        errors = []
        for ticket in tickets:
            try:
                self.committer.flush(ticket)
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others are flushed
                errors.append(exc)
        if errors:
            raise errors[0]

    def largest_in_study(self, known: dict[str, SeriesJob]) -> Callable[[], int]:
        """``largest_part`` over every listed series, once all of them are described."""
        found: list[int] = []

        def largest() -> int:
            if not found:
                jobs = [job for job in list(known.values()) if job.expected]
                if not jobs or not all(job.series.is_described for job in jobs):
                    return self.options.max_instance_bytes
                found.append(max(self.largest_part(job.series, lambda job=job: job.expected)() for job in jobs))
            return found[0]
        return largest

    def retrieve_missing_instances(self, job: SeriesJob) -> None:
        """Per-instance GETs for whatever the series request did not deliver."""
        for sop_uid in sorted(job.wanted):
            self.guard.check()
            self.retrieve_instance(job, sop_uid)

    def retrieve_instance(self, job: SeriesJob, sop_uid: str) -> None:
        """Up to ``instance_attempts`` GETs of one instance, all within its one allowance."""
        expected = frozenset([sop_uid])
        url = build_url(job.series.base_url, ["studies", job.study_uid, "series", job.series.series_uid,
                                              "instances", sop_uid])
        allowance = Allowance(self.largest_part(job.series, lambda: expected), is_total=True)
        last_error = "no answer"
        for _ in range(self.options.instance_attempts):
            with self.outcome.lock:
                self.outcome.instance_requests += 1
            try:
                self.read_multipart(url, job, expected, allowance)
            except Abandoned:
                raise
            except PartTooLarge as exc:
                self.outcome.reject(Rejection("too-large", f"{exc} (announced by its metadata, or "
                                              "transfer.max_instance_bytes); not asked for again",
                                              job.series.series_uid, sop_uid))
                return
            except SourceError as exc:
                last_error = str(exc)
                if not exc.retryable:
                    break  # 404 and friends: asking again will not help
            except BROKEN_BODY as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if sop_uid not in job.wanted:
                break
        if sop_uid in job.wanted and not self.was_rejected(sop_uid):
            self.outcome.reject(Rejection("not-retrieved", last_error[:300], job.series.series_uid, sop_uid))

    def largest_part(self, series: SourceSeries, sop_uids: Callable[[], frozenset[str]]) -> Callable[[], int]:
        """The largest allowance among the instances an answer may hold (``sop_uids()``, once
        listed), once the series' metadata has announced their sizes; ``max_instance_bytes``
        until then."""
        known: list[int] = []

        def largest() -> int:
            if known:
                return known[0]
            listed = sop_uids()
            if not series.is_described or not listed:
                return self.options.max_instance_bytes
            sizes = [getattr(series.instances.get(sop), "announced_bytes", None) for sop in listed]
            known.append(max(part_allowance(size, self.options.max_instance_bytes) for size in sizes))
            return known[0]
        return largest

    def was_rejected(self, sop_uid: str) -> bool:
        with self.outcome.lock:
            return any(r.sop_uid == sop_uid for r in self.outcome.rejections)

    def read_multipart(self, url: str, job: SeriesJob, allowed: frozenset[str] | None,
                       allowance: Allowance) -> bool:
        """Stream one response part by part; True if the body ended with its closing delimiter.
        ``allowed`` None: the instances the job's listing gives, awaited at the first part."""
        with self.client.stream(url, ACCEPT_DICOM) as response:
            reader = open_body_reader(response.headers.get("Content-Type", ""),
                                      lambda headers: self.blobstore.open_staging(), allowance)
            chunks = self.guard.watch(arrived_chunks(response.raw, CHUNK_BYTES), charged=True)
            expectation = None
            try:
                for part in reader.read(chunks):
                    allowance.spend(part.size)
                    if expectation is None:
                        try:
                            allowed = job.await_listing() if allowed is None else allowed
                        except BaseException:
                            part.sink.discard()  # received, never to be checked: no staging file left
                            raise
                        expectation = Expectation(job.study_uid, job.series.series_uid, allowed)
                    self.accept_part(part, job, expectation)
                    self.guard.check()
                    if reader.part_count >= len(allowed) + EXTRA_PARTS:
                        raise MultipartError(f"{reader.part_count} parts for {len(allowed)} instances asked for")
            finally:
                if reader.current is not None:
                    allowance.spend(reader.current.size)  # a part that broke off counts too
                discard_open_sinks(reader)
                self.committer.flush(job.ticket)  # checked instances are kept even if the body broke off
            return reader.is_closed

    def accept_part(self, part: Part, job: SeriesJob, expectation: Expectation) -> None:
        """Check one received part and move it into the store, or discard and record it."""
        checked = self.check_part(part, expectation)
        if checked is not None:
            self.hand_over(*checked, job)

    def check_part(self, part: Part, expectation: Expectation | None) -> tuple[StagedFile, InstanceRecord] | None:
        """The staged part and its record once checked (``expectation`` None: all but what
        was asked for), or None when it was discarded or rejected."""
        staged = part.sink
        declared = part.headers.get("content-length")
        if not part.is_complete or (declared and declared.isascii() and declared.isdigit() and int(declared) != part.size):
            staged.discard()  # broken off: not a rejection, the fallback fetches it again
            return None
        try:
            # Still open: the committer fsyncs and closes it (the bytes are in the page cache).
            return staged, inspect_staged(staged, expectation, self.json_cache)
        except RejectedPart as exc:
            self.reject_part(staged, exc, expectation)
            return None

    def reject_part(self, staged: StagedFile, exc: RejectedPart, expectation: Expectation | None) -> None:
        staged.discard()
        series_uid = expectation.series_for(exc.sop_uid or "") if expectation is not None else None
        self.outcome.reject(Rejection(exc.reason, exc.detail[:300], series_uid, exc.sop_uid))

    def hand_over(self, staged: StagedFile, record: InstanceRecord, job: SeriesJob | None) -> None:
        """A checked instance to the committer, unless nobody wants it (any more)."""
        if job is None or record.sop_uid not in job.wanted:
            staged.discard()  # already stored (resumed transfer) or sent twice
            return
        job.wanted.discard(record.sop_uid)
        self.committer.submit(job.ticket, staged, record)

    def placed(self, record) -> None:
        self.outcome.add_stored(record.size, self.monotonic())


class ListingMatch:
    """A study stream's parts and step 1's listing, whichever comes first.

    A part checked before the listing came waits here (its staging file and record) and is
    matched with the listing the moment it arrives, on the thread that delivers it
    (``jobs``' callback): the first instance then reaches the committer without waiting for
    the stream's next part (75 ms at 80 ms RTT, during slow start). Parts checked after are
    matched at once. ``known`` gets each listed series' job.
    """

    def __init__(self, retriever: "Retriever", study_uid: str, jobs: Future, known: dict[str, SeriesJob]):
        self.retriever, self.study_uid, self.jobs, self.known = retriever, study_uid, jobs, known
        self.lock = threading.Lock()
        self.pending: list[tuple[StagedFile, InstanceRecord]] = []
        self.pending_bytes = 0
        self.expectation: Expectation | None = None
        self.empty = False  # step 1 listed no series
        self.failed = False  # step 1 failed: the reader stops at its next part
        self.closed = False
        jobs.add_done_callback(self._listed)

    def _listed(self, jobs: Future) -> None:
        if jobs.cancelled() or jobs.exception() is not None:
            self.failed = True  # the reader raises it when it waits
            return
        with self.lock:
            self._resolve(jobs.result())

    def wait(self, check: Callable[[], None]) -> None:
        """Block for the listing (its error if it failed), ``check`` (the Task's guard:
        cancel, deadline) every second meanwhile."""
        while True:
            try:
                listing = self.jobs.result(timeout=1.0)
                break
            except FutureTimeout:
                check()
        with self.lock:
            self._resolve(listing)

    def _resolve(self, listing: dict[str, SeriesJob]) -> None:
        if self.expectation is not None or self.empty or self.closed:
            return
        self.known.update(listing)
        if not self.known:
            self.empty = True
            return
        self.expectation = Expectation.whole_study(self.study_uid,
                                                   {uid: job.expected for uid, job in self.known.items()})
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for index, (staged, record) in enumerate(pending):
            try:
                self._route(staged, record, checked_against=None)
            except BaseException:  # on the listing's thread, too: nothing may be left staged
                for later, _ in pending[index:]:
                    later.discard()
                raise

    def offer(self, checked: tuple[StagedFile, InstanceRecord], checked_against: Expectation | None) -> None:
        with self.lock:
            if self.expectation is None:
                self.pending.append(checked)
                self.pending_bytes += checked[0].size
            else:
                self._route(*checked, checked_against=checked_against)

    def _route(self, staged: StagedFile, record: InstanceRecord, checked_against: Expectation | None) -> None:
        if checked_against is None:  # checked before the listing: what was asked for is checked now
            try:
                require_expected_uids(record, self.expectation)
            except RejectedPart as exc:
                self.retriever.reject_part(staged, exc, self.expectation)
                return
        self.retriever.hand_over(staged, record, self.known.get(record.series_uid))

    def close(self) -> None:
        """The stream is over: parts checked before it broke off are matched if the listing
        is in (they need not cross the network again); parts never matched leave no file."""
        jobs = self.jobs  # done but failed: its callback may not have run yet, so ask the future
        if jobs.done() and not jobs.cancelled() and jobs.exception() is None:
            with self.lock:
                self._resolve(self.jobs.result())
        with self.lock:
            self.closed = True
            pending, self.pending = self.pending, []
        for staged, _ in pending:
            staged.discard()


def discard_open_sinks(reader) -> None:
    """A part still being written when the body broke off must not leave its staging file."""
    part = reader.current
    if part is not None and hasattr(part.sink, "discard"):
        part.sink.discard()
