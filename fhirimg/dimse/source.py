"""The three steps over DIMSE: C-FIND SERIES, C-FIND IMAGE, then C-GET (or C-MOVE to us).

The same Task, report and rules as the DICOMweb pipeline (transfer/pipeline.py), with DIMSE
in place of HTTP: step 1 (what exists) is a C-FIND at SERIES level, step 2 (what each instance
is) a C-FIND at IMAGE level per series, with the attributes that announce an instance's size
(the byte budget); step 3 a C-GET per series, ``series_parallelism`` series at a time, each
series starting as soon as its own instances are listed (time to first instance). Every
received data set is streamed into a staging file, checked (dicomcheck.inspect_staged) and
placed by the GroupCommitter, exactly as a WADO-RS part; instances already stored are not
asked for (a resumed Task asks for the missing SOP Instance UIDs only, an IMAGE-level list).

When the source does not offer C-GET (or refuses it), the instances are C-MOVEd to our own
AE title and arrive through the C-STORE listener, which stores and indexes them; the series
is done when the index holds what was asked for (or what the source says it sent), within
the Task's deadline. Sources that answer slowly around a C-MOVE are normal (minutes at some
PACS): the guard's deadline is the bound, not the DIMSE timeout between pending responses.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pydicom.dataset import Dataset
from sqlalchemy import select

from fhirimg.transfer.blobstore import BlobStore, StagedFile
from fhirimg.transfer.budget import ByteBudget, announced_size, part_allowance
from fhirimg.transfer.committer import GroupCommitter
from fhirimg.transfer.dicomcheck import ElementJsonCache, Expectation, RejectedPart, inspect_staged
from fhirimg.transfer.guard import TaskGuard, first_cause
from fhirimg.transfer.netpolicy import HostPolicy, HostRefused
from fhirimg.transfer.pipeline import STEPS, Span, TransferReport, announce, missing_instances, run_collecting, \
    sampling
from fhirimg.transfer.qido import MAX_RESULTS, Rejection, SourceInstance, SourceSeries, SourceStudy
from fhirimg.transfer.retrieve import RetrieveOptions, RetrieveOutcome, SeriesJob
from fhirimg.transfer.schema import dicom_instance
from fhirimg.transfer.uids import is_valid_uid

from .incoming import InstanceTooLarge, ProtocolLimit
from .scu import (STORE_CANNOT_UNDERSTAND, STORE_SUCCESS, Completion, DimseAddress, DimseError, ScuSettings,
                  Session, find_contexts, retrieve_contexts)

log = logging.getLogger("fhirimg.dimse")

MAX_UIDS_PER_REQUEST = 500  # one IMAGE-level C-GET/C-MOVE names at most this many SOP Instance UIDs
MOVE_POLL_INTERVAL = 0.1
WRITE_BYTES = 1 << 20
SERIES_KEYS = {"SeriesInstanceUID": "", "Modality": "", "SeriesNumber": None, "SeriesDescription": "",
               "BodyPartExamined": "", "NumberOfSeriesRelatedInstances": None}
# SOP class and number, and what announces the pixel data's size (budget.announced_size).
IMAGE_KEYS = {"SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": None, "Rows": None, "Columns": None,
              "BitsAllocated": None, "SamplesPerPixel": None, "NumberOfFrames": None}
SIZE_TAGS = {"Rows": "00280010", "Columns": "00280011", "BitsAllocated": "00280100",
             "SamplesPerPixel": "00280002", "NumberOfFrames": "00280008"}


@dataclass
class Peer:
    """A DICOM node and the allow-listed address to connect to (not its name: no second lookup)."""

    address: DimseAddress
    connect_to: str


@dataclass
class DimseSource:
    """Where a study comes from over DIMSE: its node, per-series nodes (R5 series.endpoint), settings."""

    peer: Peer
    settings: ScuSettings
    series_peers: dict[str, Peer] = field(default_factory=dict)

    def for_series(self, series_uid: str) -> Peer:
        return self.series_peers.get(series_uid, self.peer)


def checked_peer(policy: HostPolicy, address: DimseAddress) -> Peer:
    """The allow-list's verdict before any association: refused hosts get no connection."""
    try:
        addresses = policy.checked_addresses(address.host, address.port)
    except HostRefused as exc:
        exc.host = address.host
        raise
    if not addresses:
        raise HostRefused(f"host {address.host} resolves to no address")
    return Peer(address, addresses[0])


def transfer_study_dimse(source: DimseSource, blobstore: BlobStore, study_uid: str, options: RetrieveOptions,
                         should_stop: Callable[[], bool] = lambda: False,
                         on_step: Callable[[str], None] = lambda step: None,
                         monotonic: Callable[[], float] = time.monotonic,
                         on_progress: Callable[[dict], None] | None = None) -> TransferReport:
    """Run the three steps; the report says what is still missing (nothing when complete)."""
    report = TransferReport(SourceStudy(study_uid), started_at=monotonic())
    budget = ByteBudget(options.max_instance_bytes, options.max_task_bytes)
    guard = TaskGuard(options.guard_limits(), budget, should_stop, monotonic)
    spans = {step: Span() for step in STEPS}
    retriever = DimseRetriever(source, blobstore, options, guard)
    study = report.study
    with sampling(on_progress, spans, budget, retriever, monotonic):
        on_step("qido")
        with spans["qido"].timing(monotonic):
            study.series = find_series(source, study_uid, study, guard)
        on_step("retrieve")

        def chain(series: SourceSeries) -> None:
            guard.check()
            with spans["metadata"].timing(monotonic):
                find_instances(source, study_uid, series, study, guard)
            announce(budget, series)
            with spans["retrieve"].timing(monotonic):
                retriever.retrieve_series(study_uid, series)

        with retriever.running():
            errors = run_collecting(max(1, options.series_parallelism), [lambda s=s: chain(s) for s in study.series])
        report.outcome = retriever.outcome
        error = first_cause(errors)
        if error is not None:
            raise error
        report.durations = {step: spans[step].seconds for step in STEPS}
        report.missing = missing_instances(blobstore, study)
        return report


# --- steps 1 and 2: C-FIND -------------------------------------------------------------------

def query(level: str, keys: dict, **unique) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in {**unique, **keys}.items():
        setattr(identifier, keyword, value)
    return identifier


def find_bounded(source: DimseSource, peer: Peer, identifier: Dataset, guard: TaskGuard) -> Iterator[Dataset]:
    """The identifiers one C-FIND answers, at most MAX_RESULTS (its bytes: incoming.py)."""
    with Session(source.settings, peer.address, peer.connect_to, find_contexts(), guard=guard) as session:
        for count, found in enumerate(session.find(identifier), start=1):
            if count > MAX_RESULTS:
                raise ProtocolLimit(f"C-FIND answered more than {MAX_RESULTS} results")
            yield found


def find_series(source: DimseSource, study_uid: str, study: SourceStudy, guard: TaskGuard) -> list[SourceSeries]:
    """C-FIND at SERIES level: the series of the study with valid UIDs (step 1)."""
    found: dict[str, SourceSeries] = {}
    for item in find_bounded(source, source.peer, query("SERIES", SERIES_KEYS, StudyInstanceUID=study_uid), guard):
        series_uid = text(item, "SeriesInstanceUID", 64)
        if not is_valid_uid(series_uid) or text(item, "StudyInstanceUID", 64) not in (None, study_uid):
            study.rejections.append(Rejection("invalid-uid", f"series UID {str(series_uid)[:70]!r}"))
            continue
        found[series_uid] = SourceSeries(series_uid, modality=text(item, "Modality", 16),
                                         number=number(item, "SeriesNumber"),
                                         description=text(item, "SeriesDescription", 64),
                                         body_part=text(item, "BodyPartExamined", 16))
    return list(found.values())


def find_instances(source: DimseSource, study_uid: str, series: SourceSeries, study: SourceStudy,
                   guard: TaskGuard) -> None:
    """C-FIND at IMAGE level into ``series.instances``, with their announced sizes (step 2)."""
    identifier = query("IMAGE", IMAGE_KEYS, StudyInstanceUID=study_uid, SeriesInstanceUID=series.series_uid)
    for item in find_bounded(source, source.for_series(series.series_uid), identifier, guard):
        sop_uid = text(item, "SOPInstanceUID", 64)
        if not is_valid_uid(sop_uid) or text(item, "SeriesInstanceUID", 64) not in (None, series.series_uid):
            study.rejections.append(Rejection("invalid-uid", f"SOP instance UID {str(sop_uid)[:70]!r}",
                                              series.series_uid))
            continue
        sop_class = text(item, "SOPClassUID", 64)
        series.instances[sop_uid] = SourceInstance(sop_uid, sop_class if is_valid_uid(sop_class) else None,
                                                   number(item, "InstanceNumber"), announced_bytes(item))
    series.is_described = True


def text(item: Dataset, keyword: str, max_length: int) -> str | None:
    """A single value as text (None when absent, empty or unreadable: a PACS's values are input)."""
    try:
        value = item.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises assorted errors on malformed values
        return None
    if value is None or value == "" or isinstance(value, (list, tuple, bytes, Dataset)):
        return None
    return str(value).strip()[:max_length] or None


def number(item: Dataset, keyword: str) -> int | None:
    value = text(item, keyword, 16)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def announced_bytes(item: Dataset) -> int | None:
    """What the IMAGE-level answer announces for the pixel data (as WADO-RS metadata would)."""
    values = {tag: {"Value": [number(item, keyword)]} for keyword, tag in SIZE_TAGS.items()
              if number(item, keyword) is not None}
    return announced_size(values)


# --- step 3: C-GET, or C-MOVE to our listener ------------------------------------------------

class DimseRetriever:
    """Step 3 for one study: per series, C-GET (or C-MOVE) what is not stored yet."""

    def __init__(self, source: DimseSource, blobstore: BlobStore, options: RetrieveOptions, guard: TaskGuard):
        self.source, self.blobstore, self.options, self.guard = source, blobstore, options, guard
        self.mode = source.settings.retrieve  # "auto" turns into "move" when a source refuses C-GET
        self.get_worked = False  # once a C-GET brought instances, an abort is a failure, not a refusal
        self.outcome = RetrieveOutcome()
        self.committer: GroupCommitter | None = None
        self.json_cache = ElementJsonCache()

    @contextmanager
    def running(self) -> Iterator[None]:
        self.committer = GroupCommitter(self.blobstore, lambda record: self.outcome.add_stored(
            record.size, self.guard.monotonic()))
        try:
            yield
        finally:
            self.committer.close()

    def retrieve_series(self, study_uid: str, series: SourceSeries) -> None:
        """Up to ``instance_attempts`` rounds, each asking for what is still missing."""
        expected = frozenset(series.instances)
        stored = self.blobstore.stored_sop_uids(study_uid, series.series_uid)
        job = SeriesJob(study_uid, series, set(expected) - stored, expected)
        with self.outcome.lock:
            self.outcome.skipped += len(expected) - len(job.wanted)
        last_error, one_by_one = "no answer", False
        for attempt in range(self.options.instance_attempts):
            wanted = sorted(job.wanted - self.rejected())
            if not wanted:
                break
            whole = attempt == 0 and len(wanted) == len(expected)
            try:
                completions = self.fetch(job, self.identifiers(job, wanted, whole, one_by_one))
                # An IMAGE-level list refused as a whole: the next round names one instance per request.
                one_by_one = one_by_one or (not whole and any(c.is_refusal for c in completions))
                failures = [c for c in completions if c.status != 0]
                last_error = failures[-1].describe() if failures else "the source did not send it"
            except InstanceTooLarge:
                continue  # recorded when it was cut; the others are asked for again
            except (DimseError, ProtocolLimit) as exc:
                last_error = exc.public() if isinstance(exc, DimseError) else str(exc)
                if not (isinstance(exc, DimseError) and exc.retryable):
                    break
            finally:
                self.committer.flush(job.ticket)
        for sop_uid in sorted(job.wanted - self.rejected()):
            self.outcome.reject(Rejection("not-retrieved", last_error[:300], series.series_uid, sop_uid))

    def rejected(self) -> set[str]:
        with self.outcome.lock:
            return {r.sop_uid for r in self.outcome.rejections if r.sop_uid}

    def identifiers(self, job: SeriesJob, wanted: list[str], whole: bool, one_by_one: bool) -> list[Dataset]:
        """SERIES level for a whole series, else IMAGE level naming the missing instances."""
        unique = {"StudyInstanceUID": job.study_uid, "SeriesInstanceUID": job.series.series_uid}
        if whole:
            return [query("SERIES", {}, **unique)]
        size = 1 if one_by_one else MAX_UIDS_PER_REQUEST
        return [query("IMAGE", {}, **unique, SOPInstanceUID=wanted[i:i + size] if size > 1 else wanted[i])
                for i in range(0, len(wanted), size)]

    def fetch(self, job: SeriesJob, identifiers: list[Dataset]) -> list[Completion]:
        """The series' requests on one association; their final responses.

        A source that refuses C-GET by aborting the association (Orthanc does, for a node not
        allowed to C-GET) gets a second association, for C-MOVE.
        """
        try:
            return self.fetch_on_one_association(job, identifiers)
        except GetRefused:
            return self.fetch_on_one_association(job, identifiers)

    def fetch_on_one_association(self, job: SeriesJob, identifiers: list[Dataset]) -> list[Completion]:
        classes = {job.series.instances[sop].sop_class_uid for sop in job.wanted if sop in job.series.instances}
        contexts, roles = retrieve_contexts(None if None in classes else classes, self.mode)
        peer = self.source.for_series(job.series.series_uid)
        store = SeriesStore(self, job)
        completions = []
        with Session(self.source.settings, peer.address, peer.connect_to, contexts, roles, self.guard,
                     target=store, on_store=store.store) as session:
            for identifier in identifiers:
                self.guard.check()
                completions.append(self.request(session, store, job, identifier))
                self.committer.flush(job.ticket)
        return completions

    def request(self, session: Session, store: SeriesStore, job: SeriesJob, identifier: Dataset) -> Completion:
        with self.outcome.lock:
            if identifier.QueryRetrieveLevel == "SERIES":
                self.outcome.series_requests += 1
            else:
                self.outcome.instance_requests += 1
        if self.choose(session) == "get":
            may_move = self.mode == "auto" and session.can_move and not self.get_worked
            received = store.received
            try:
                completion = session.get(identifier)
            except DimseError as exc:
                if may_move and store.received == received:
                    self.use_move(session, f"it aborted the association ({exc})")
                    raise GetRefused() from exc
                raise
            if not (completion.is_refusal and may_move):
                self.get_worked = self.get_worked or completion.completed > 0
                return completion
            self.use_move(session, f"status 0x{completion.status:04X}")
        return self.move(session, job, identifier)

    def use_move(self, session: Session, why: str) -> None:
        log.warning("the DICOM source %s refused C-GET (%s); using C-MOVE to %s", session.source, why,
                    self.source.settings.ae_title)
        self.mode = "move"

    def choose(self, session: Session) -> str:
        if self.mode in ("auto", "get") and session.can_get:
            return "get"
        if self.mode in ("auto", "move") and session.can_move:
            return "move"
        offered = "C-GET" if self.mode == "get" else "C-MOVE" if self.mode == "move" else "C-GET or C-MOVE"
        raise DimseError(f"the DICOM source does not offer {offered} (Study Root) for this series")

    def move(self, session: Session, job: SeriesJob, identifier: Dataset) -> Completion:
        """C-MOVE to our own AE title; done when the listener has indexed what was sent."""
        arrivals = MovedInstances(self, job, requested_uids(identifier, job))
        completion = session.move(identifier, self.source.settings.ae_title, arrivals.poll_now_and_then)
        arrivals.settle(completion.completed, self.source.settings.dimse_timeout)
        return completion


def requested_uids(identifier: Dataset, job: SeriesJob) -> set[str]:
    if identifier.QueryRetrieveLevel == "SERIES":
        return set(job.wanted)
    value = identifier.SOPInstanceUID
    return {str(value)} if isinstance(value, str) else {str(v) for v in value}


class GetRefused(Exception):
    """The source refused C-GET by aborting the association; C-MOVE gets a new one."""


class StagedInstance:
    """A C-STORE data set streaming into a staging file, cut at its allowance.

    Fragments (a PDU each, 16 KB from dcmtk-based peers) are gathered into writes of
    ``WRITE_BYTES``: one write and one hash update per fragment cost a quarter of a C-GET's
    CPU, in a process where pynetdicom's threads already compete for the GIL.
    """

    def __init__(self, staged: StagedFile, sop_uid: str, allowance: int, on_cut: Callable[[], None]):
        self.staged, self.sop_uid, self.allowance, self.on_cut = staged, sop_uid, allowance, on_cut
        self.pending = bytearray()

    def write(self, data) -> None:
        if self.staged.size + len(self.pending) + len(data) > self.allowance:
            self.discard()
            self.on_cut()
            raise InstanceTooLarge(self.sop_uid, self.allowance)
        self.pending += data
        if len(self.pending) >= WRITE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.staged.write(self.pending)
            self.pending = bytearray()

    def discard(self) -> None:
        self.pending = bytearray()
        self.staged.discard()


class SeriesStore:
    """Where the C-STOREs of one series' C-GET go: staging, the check, the committer."""

    def __init__(self, retriever: DimseRetriever, job: SeriesJob):
        self.retriever, self.job = retriever, job
        self.expectation = Expectation(job.study_uid, job.series.series_uid, job.expected)
        self.received = 0  # data sets that began to arrive

    def begin(self, sop_class_uid: str, sop_uid: str, header: bytes) -> StagedInstance:
        """A data set starts arriving (DUL thread): its file, and how much it may bring."""
        self.received += 1
        instance = self.job.series.instances.get(sop_uid)
        options = self.retriever.options
        allowance = part_allowance(instance.announced_bytes if instance else None, options.max_instance_bytes)

        def cut() -> None:
            self.retriever.outcome.reject(Rejection(
                "too-large", f"more than {allowance} bytes (announced by its C-FIND answer, or "
                "transfer.max_instance_bytes); not asked for again", self.job.series.series_uid, sop_uid))

        staged = StagedInstance(self.retriever.blobstore.open_staging(), sop_uid, allowance, cut)
        staged.write(header)
        return staged

    def store(self, incoming: StagedInstance) -> int:
        """A data set is complete (the C-GET's thread): check it, hand it to the committer."""
        incoming.flush()
        staged, series_uid = incoming.staged, self.job.series.series_uid
        try:
            record = inspect_staged(staged, self.expectation, self.retriever.json_cache)
        except RejectedPart as exc:
            staged.discard()
            self.retriever.outcome.reject(Rejection(exc.reason, exc.detail[:300], series_uid,
                                                    exc.sop_uid or incoming.sop_uid))
            return STORE_CANNOT_UNDERSTAND
        if record.sop_uid not in self.job.wanted:
            staged.discard()  # already stored (resumed transfer) or sent twice
            return STORE_SUCCESS
        self.job.wanted.discard(record.sop_uid)
        self.retriever.committer.submit(self.job.ticket, staged, record)
        return STORE_SUCCESS


class MovedInstances:
    """What a C-MOVE to our listener has placed in the index so far, for one series."""

    def __init__(self, retriever: DimseRetriever, job: SeriesJob, requested: set[str]):
        self.retriever, self.job, self.requested = retriever, job, requested
        self.arrived = 0
        self.polled_at = float("-inf")

    def poll_now_and_then(self) -> None:
        now = self.retriever.guard.monotonic()
        if now - self.polled_at >= MOVE_POLL_INTERVAL:
            self.polled_at = now
            self.poll()

    def poll(self) -> None:
        blobstore, job = self.retriever.blobstore, self.job
        new = (self.requested & job.wanted) & blobstore.stored_sop_uids(job.study_uid, job.series.series_uid)
        if not new:
            return
        job.wanted.difference_update(new)
        self.arrived += len(new)
        table = dicom_instance
        with blobstore.engine.connect() as conn:
            sizes = conn.execute(select(table.c.size).where(table.c.sop_uid.in_(sorted(new)))).scalars().all()
        for size in sizes:
            self.retriever.outcome.add_stored(int(size), self.retriever.guard.monotonic())

    def settle(self, completed: int, timeout: float) -> None:
        """After the final response: wait (at most ``timeout``) for what the source says it sent."""
        guard = self.retriever.guard
        deadline = guard.monotonic() + timeout
        while True:
            self.poll()
            if not (self.requested & self.job.wanted) or self.arrived >= completed:
                return
            if guard.monotonic() >= deadline:
                return
            guard.check()
            time.sleep(MOVE_POLL_INTERVAL)
