"""Step 3 — pixel data: WADO-RS retrieve per series, streamed into the blob store (PS3.18 §10.4).

One multipart GET per series (bounded parallelism across series) is as fast as a
plain GET of the whole study; a GET per instance costs ~3 ms each at the source and
runs at 1/5-1/8 of that, so it is only the fallback: for a series whose response broke
off, and for the few instances a resumed transfer still lacks. Every part goes to a
staging file, is checked with pydicom, then renamed into place; instances already
stored are never fetched again. Checked files are placed in the store by a committer
thread (see committer.py) so that the readers never wait on the disk.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests
import urllib3.exceptions

from .blobstore import BlobStore
from .client import SourceError, TransferClient, build_url
from .committer import GroupCommitter, SeriesTicket
from .dicomcheck import ElementJsonCache, Expectation, RejectedPart, inspect_staged
from .multipart import MultipartError, Part, open_body_reader
from .qido import Rejection, SourceSeries, SourceStudy

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK_BYTES = 1 << 20
BROKEN_BODY = (requests.RequestException, urllib3.exceptions.HTTPError, MultipartError, SourceError, OSError)


class TooSlow(SourceError):
    """The source sends slower than the configured floor: the whole transfer stops (asking
    again, instance by instance, would hold the worker as long again for each)."""

    def __init__(self, message: str):
        super().__init__(message, category="slower than the configured minimum throughput")


class Cancelled(Exception):
    """The Task was cancelled; the transfer stops at the next instance."""


@dataclass
class RetrieveOptions:
    series_parallelism: int = 4
    instance_attempts: int = 3
    per_instance_max: int = 8  # resume with at most this many missing: fetch them one by one
    max_instance_bytes: int = 2 << 30
    min_throughput: int = 64 * 1024  # bytes/s a response must average over throughput_window (0: off)
    throughput_window: float = 30.0


@dataclass
class RetrieveOutcome:
    """Counters of step 3, shared by the series threads (update under ``lock``)."""

    stored: int = 0
    skipped: int = 0
    bytes: int = 0
    series_requests: int = 0
    instance_requests: int = 0
    fallbacks: int = 0
    first_instance_at: float | None = None
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
        with self.lock:
            self.rejections.append(rejection)


@dataclass
class SeriesJob:
    """What one series still needs: ``wanted`` shrinks as instances are handed to the committer."""

    study_uid: str
    series: SourceSeries
    wanted: set[str]
    expected: frozenset[str] = frozenset()  # the instances known when the job was planned
    ticket: SeriesTicket = field(init=False)

    def __post_init__(self):
        self.ticket = SeriesTicket(self.wanted)


class Retriever:
    """Runs step 3 for one study with an HTTP client, a blob store and a stop check."""

    def __init__(self, client: TransferClient, blobstore: BlobStore, options: RetrieveOptions,
                 should_stop: Callable[[], bool] = lambda: False,
                 monotonic: Callable[[], float] = time.monotonic):
        self.client, self.blobstore, self.options = client, blobstore, options
        self.should_stop, self.monotonic = should_stop, monotonic
        self.outcome = RetrieveOutcome()
        self.stop_event = threading.Event()
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
        # The cause, not the other series' Cancelled that it set off.
        for error in sorted((e for e in errors if e is not None), key=lambda e: isinstance(e, Cancelled)):
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

    def retrieve_known_series(self, study_uid: str, series: SourceSeries, expected: frozenset[str]) -> None:
        """Plan and fetch one series in the calling thread (inside ``running``)."""
        job = self.plan_series(study_uid, series, expected)
        if job.wanted:
            self.retrieve_series_job(job)

    def plan_series(self, study_uid: str, series: SourceSeries, expected: frozenset[str],
                    count_skipped: bool = True) -> SeriesJob:
        stored = self.blobstore.stored_sop_uids(study_uid, series.series_uid)
        wanted = set(expected) - stored
        with self.outcome.lock:
            self.outcome.skipped += (len(expected) - len(wanted)) if count_skipped else 0
        return SeriesJob(study_uid, series, wanted, expected)

    def retrieve_series_job(self, job: SeriesJob) -> None:
        try:
            if len(job.wanted) > self.options.per_instance_max or len(job.wanted) == len(job.expected):
                self.retrieve_series(job)
            self.retrieve_missing_instances(job)
        except Cancelled:
            self.stop_event.set()
            raise

    def retrieve_series(self, job: SeriesJob) -> None:
        """One multipart GET for the series; a broken body leaves the rest to the fallback."""
        url = build_url(job.series.base_url, ["studies", job.study_uid, "series", job.series.series_uid])
        with self.outcome.lock:
            self.outcome.series_requests += 1
        try:
            complete = self.read_multipart(url, job, job.expected)
        except TooSlow:
            raise
        except BROKEN_BODY:
            complete = False
        if not complete and job.wanted:
            with self.outcome.lock:
                self.outcome.fallbacks += 1

    def retrieve_missing_instances(self, job: SeriesJob) -> None:
        """Per-instance GETs for whatever the series request did not deliver."""
        for sop_uid in sorted(job.wanted):
            self.check_stop()
            expected = frozenset([sop_uid])
            url = build_url(job.series.base_url, ["studies", job.study_uid, "series", job.series.series_uid,
                                                  "instances", sop_uid])
            last_error = "no answer"
            for _ in range(self.options.instance_attempts):
                with self.outcome.lock:
                    self.outcome.instance_requests += 1
                try:
                    self.read_multipart(url, job, expected)
                except TooSlow:
                    raise
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

    def was_rejected(self, sop_uid: str) -> bool:
        with self.outcome.lock:
            return any(r.sop_uid == sop_uid for r in self.outcome.rejections)

    def read_multipart(self, url: str, job: SeriesJob, allowed: frozenset[str]) -> bool:
        """Stream one response part by part; True if the body ended with its closing delimiter."""
        with self.client.stream(url, ACCEPT_DICOM) as response:
            reader = open_body_reader(response.headers.get("Content-Type", ""),
                                      lambda headers: self.blobstore.open_staging(),
                                      self.options.max_instance_bytes)
            chunks = self.watched(arrived_chunks(response.raw, CHUNK_BYTES))
            expectation = Expectation(job.study_uid, job.series.series_uid, allowed)
            try:
                for part in reader.read(chunks):
                    self.accept_part(part, job, expectation)
                    self.check_stop()
            finally:
                discard_open_sinks(reader)
                self.committer.flush(job.ticket)  # checked instances are kept even if the body broke off
            return reader.is_closed

    def watched(self, chunks):
        """The chunks of one response, with a cancel noticed while a part is still arriving
        (twice a second) and a floor on the throughput averaged over each window."""
        window_start = last_check = self.monotonic()
        window_bytes = 0
        for chunk in chunks:
            now = self.monotonic()
            window_bytes += len(chunk)
            if now - last_check >= 0.5:
                self.check_stop()
                last_check = now
            elapsed = now - window_start
            if self.options.min_throughput and elapsed >= self.options.throughput_window:
                if window_bytes / elapsed < self.options.min_throughput:
                    self.stop_event.set()  # the other series stop too
                    raise TooSlow(f"the source sent {window_bytes} bytes in {elapsed:.1f} s, less than "
                                  f"{self.options.min_throughput} bytes/s")
                window_start, window_bytes = now, 0
            yield chunk

    def accept_part(self, part: Part, job: SeriesJob, expectation: Expectation) -> None:
        """Check one received part and move it into the store, or discard and record it."""
        staged = part.sink
        declared = part.headers.get("content-length")
        if not part.is_complete or (declared and declared.isdigit() and int(declared) != part.size):
            staged.discard()  # broken off: not a rejection, the fallback fetches it again
            return
        try:
            # Still open: the committer fsyncs and closes it (the bytes are in the page cache).
            record = inspect_staged(staged, expectation, self.json_cache)
        except RejectedPart as exc:
            staged.discard()
            self.outcome.reject(Rejection(exc.reason, exc.detail[:300], job.series.series_uid, exc.sop_uid))
            return
        if record.sop_uid not in job.wanted:
            staged.discard()  # already stored (resumed transfer) or sent twice
            return
        job.wanted.discard(record.sop_uid)
        self.committer.submit(job.ticket, staged, record)

    def placed(self, record) -> None:
        self.outcome.add_stored(record.size, self.monotonic())

    def check_stop(self) -> None:
        if self.stop_event.is_set() or self.should_stop():
            self.stop_event.set()
            raise Cancelled()


def arrived_chunks(raw, size: int):
    """The body as it arrives: each chunk is what the socket had, up to ``size`` bytes.

    ``raw.stream(size)`` waits until ``size`` bytes have come; on a slow link that holds
    back instances already received (time to first instance, a cancel noticed late).
    """
    while True:
        chunk = raw.read1(size, decode_content=False)
        if not chunk:
            return
        yield chunk


def discard_open_sinks(reader) -> None:
    """A part still being written when the body broke off must not leave its staging file."""
    part = reader.current
    if part is not None and hasattr(part.sink, "discard"):
        part.sink.discard()
