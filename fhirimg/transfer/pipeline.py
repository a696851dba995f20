"""The three steps, timed: what exists (QIDO), metadata (WADO-RS), pixel data.

Plain code over a client and a blob store, so the worker, the benchmark and the tests
run exactly the same thing. ``on_step`` is told when each step starts (the worker
writes it into Task.businessStatus).

Step 3 needs only what step 1 found for a series, so each series is retrieved as soon
as its own instances are listed, with its metadata (step 2) fetched beside it: on a
1 000-instance study that took the 0.45 s of series metadata off the total and brought
the first instance earlier. A series nothing of which is held yet is even asked for
while its instances are being listed (one round trip less before its first byte over a
WAN), its parts checked against the listing once it is there. Instances that only step 2
revealed are fetched after, and a study is complete only when everything either step
listed is stored.

A far source (``streams_whole_study``) gets one request for the whole study instead, sent
as soon as the warmed connections have measured the round trip, while step 1 lists the
series; the series requests then fetch only what that stream did not deliver.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .blobstore import BlobStore
from .budget import ByteBudget
from .client import TransferClient
from .progress import ProgressSampler
from .guard import Cancelled, TaskGuard, first_cause
from .metadata import reconcile_series, retrieve_series_metadata
from .qido import SourceSeries, SourceStudy, search_for_instances, search_for_series
from .retrieve import RetrieveOptions, RetrieveOutcome, Retriever

STEPS = ("qido", "metadata", "retrieve")
WARM_WAIT = 2.0  # seconds the warm-up's handshakes may take before step 1 starts without them


@dataclass
class TransferReport:
    """Where the time went and what was moved; becomes Task.output."""

    study: SourceStudy
    durations: dict[str, float] = field(default_factory=dict)
    outcome: RetrieveOutcome | None = None
    missing: set[str] = field(default_factory=set)
    started_at: float = 0.0

    @property
    def time_to_first_instance(self) -> float | None:
        if self.outcome is None or self.outcome.first_instance_at is None:
            return None
        return self.outcome.first_instance_at - self.started_at


def transfer_study(client: TransferClient, blobstore: BlobStore, base: str, study_uid: str,
                   options: RetrieveOptions, page_size: int = 200,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_step: Callable[[str], None] = lambda step: None,
                   series_bases: dict[str, str] | None = None,
                   monotonic: Callable[[], float] = time.monotonic,
                   on_progress: Callable[[dict], None] | None = None) -> TransferReport:
    """Run the three steps; the report says what is still missing (nothing when complete).

    Each series goes through its own chain, ``parallelism`` chains at a time: QIDO of its
    instances, then its pixel data at once, while its metadata is fetched beside it. The
    first series therefore streams as soon as its own instance list is known (time to
    first instance), not after every series has been listed. Each step's duration is the
    span from its first start to its last end, so the spans overlap. Every answer, JSON or
    pixel data, goes through the Task's guard (cancel, deadline, throughput, byte budget).
    """
    report = TransferReport(SourceStudy(study_uid), started_at=monotonic())
    budget = ByteBudget(options.max_instance_bytes, options.max_task_bytes)
    guard = TaskGuard(options.guard_limits(), budget, should_stop, monotonic)
    spans = {step: Span() for step in STEPS}
    retriever = Retriever(client, blobstore, options, guard)
    study = report.study
    parallelism = max(1, options.series_parallelism)
    with sampling(on_progress, spans, budget, retriever, monotonic):
        on_step("qido")
        spans["qido"].begin(report.started_at)
        # The round trip, for streams_whole_study: a handshake that takes longer (a lost SYN, a
        # host that does not answer) leaves it unknown, and step 1 starts anyway.
        warm_connections(client, base, parallelism).join(WARM_WAIT)
        streaming = streams_whole_study(client, blobstore, base, study_uid, options, series_bases)
        metadata_futures: list = []
        listed: dict[str, frozenset[str]] = {}  # what step 1 listed, per series

        # Left in this order: the stream ends, then the committer places what it handed over.
        jobs: Future = Future()  # each series' job, once all are listed (the study stream)
        with ThreadPoolExecutor(parallelism, thread_name_prefix="metadata") as metadata_pool, \
                retriever.running(), ThreadPoolExecutor(1, thread_name_prefix="study-stream") as streamer, \
                settled(jobs):
            if streaming:
                def stream() -> bool:
                    with spans["retrieve"].timing(monotonic):
                        return retriever.stream_study(study_uid, base, jobs)
                streamed = streamer.submit(stream)
            try:
                study.series = search_for_series(client, base, study_uid, page_size, study, guard.watch)
            finally:
                spans["qido"].end(monotonic())
            for series in study.series:
                series.base_url = (series_bases or {}).get(series.series_uid, base)
            on_step("retrieve")

            def describe(series) -> None:
                with spans["metadata"].timing(monotonic):
                    datasets = retrieve_series_metadata(client, study_uid, series, guard.watch)
                    reconcile_series(series, datasets, study)
                announce(budget, series)

            def list_series(series) -> frozenset[str]:
                with spans["qido"].timing(monotonic):
                    search_for_instances(client, study_uid, series, page_size, study, guard.watch)
                listed[series.series_uid] = expected = frozenset(series.instances)  # step 2 may add from now on
                announce(budget, series)
                metadata_futures.append(metadata_pool.submit(describe, series))
                return expected

            def chain(series) -> None:
                guard.check()
                with spans["retrieve"].timing(monotonic):
                    if retriever.retrieve_while_listing(study_uid, series, lambda: list_series(series)):
                        return
                expected = list_series(series)
                with spans["retrieve"].timing(monotonic):
                    retriever.retrieve_known_series(study_uid, series, expected)

            if streaming:
                errors = stream_then_fill(retriever, study, parallelism, list_series, listed, jobs, streamed,
                                          lambda: spans["retrieve"].timing(monotonic))
            else:
                errors = run_collecting(parallelism, [lambda s=s: chain(s) for s in study.series])
        errors += [future.exception() for future in metadata_futures]
        report.outcome = retriever.outcome
        error = first_cause(errors)  # step 1 and 3 errors first, then step 2's; Cancelled last
        if error is not None:
            raise error
        if any(frozenset(s.instances) - listed.get(s.series_uid, frozenset()) for s in study.series):
            with spans["retrieve"].timing(monotonic):
                retriever.retrieve_study(study, count_skipped=False)  # what only step 2 listed
        report.durations = {step: spans[step].seconds for step in STEPS}
        report.missing = missing_instances(blobstore, study)
        return report


def streams_whole_study(client: TransferClient, blobstore: BlobStore, base: str, study_uid: str,
                        options: RetrieveOptions, series_bases: dict[str, str] | None) -> bool:
    """Whether step 3 starts as one ``GET /studies/{uid}``: for a first transfer (nothing of
    the study held, every series from ``base``) from a source at least
    ``options.stream_study_rtt`` away, as the kernel measured its round trip.

    Over a WAN, parallel series streams each slow-start into the same bottleneck at the same
    moment and overflow its queue (measured at 80 ms / 200 Mbit/s: ~15 000 segments lost on
    a 105 MB study, 0.92 of one stream against a BBR sender, 0.4-0.6 against CUBIC), and
    every new series request pays a round trip and a new ramp. One stream keeps one window
    open for the whole study, as a plain GET does. Near the source the parallel series
    streams are kept: there they put both cores to work (loopback: 15% faster than one).
    """
    if any(series_base != base for series_base in (series_bases or {}).values()):
        return False
    rtt = client.round_trip(base)
    far = options.stream_study_rtt == 0 or (rtt is not None and rtt >= options.stream_study_rtt)
    return far and not blobstore.stored_sop_uids(study_uid)


def stream_then_fill(retriever: Retriever, study: SourceStudy, parallelism: int, list_series: Callable,
                     listed: dict[str, frozenset[str]], jobs: Future, streamed: Future,
                     timing: Callable) -> list[BaseException | None]:
    """List every series (with its metadata beside) while the study stream runs, hand the
    stream the series' jobs (what step 1 listed: ``listed``), then fetch series by series
    what it did not deliver."""
    errors = run_collecting(parallelism, [lambda s=s: list_series(s) for s in study.series])
    failed = first_cause(errors)
    if failed is not None:
        jobs.set_exception(failed)
    else:
        jobs.set_result({s.series_uid: retriever.plan_series(study.study_uid, s, listed[s.series_uid])
                         for s in study.series})  # if this raises, settled() resolves jobs
    errors.append(streamed.exception())
    if first_cause(errors) is not None:
        return errors
    left = [job for job in jobs.result().values() if job.wanted]
    with timing():
        errors += run_collecting(parallelism, [lambda j=j: retriever.retrieve_series_job(j) for j in left])
    return errors


@contextmanager
def settled(jobs: Future) -> Iterator[None]:
    """Whatever ends the block, the study stream waiting for ``jobs`` is told (before the
    block's stream thread is waited for): a transfer never hangs on a listing that will not come."""
    try:
        yield
    finally:
        if not jobs.done():
            jobs.set_exception(Cancelled("the transfer stopped before step 1 listed the study"))


def warm_connections(client: TransferClient, base: str, parallelism: int) -> threading.Thread:
    """Open the connections step 1 and the series chains will use, all at once (each chain's
    first request would otherwise wait a round trip for its handshake); their handshakes
    also measure the round trip (``TransferClient.round_trip``)."""
    def warm() -> None:
        try:
            client.warm(base, parallelism)
        except Exception:  # noqa: BLE001 - an optimisation: the requests report real failures
            pass
    thread = threading.Thread(target=warm, name="warm-connections", daemon=True)
    thread.start()
    return thread


def sampling(on_progress, spans: dict, budget: ByteBudget, retriever: Retriever, monotonic):
    """Live progress for the console while the steps run, if someone listens."""
    if on_progress is None:
        return nullcontext()
    return ProgressSampler(on_progress, spans, lambda: budget.spent, lambda: retriever.outcome.stored,
                           monotonic=monotonic)


def announce(budget: ByteBudget, series: SourceSeries) -> None:
    """Tell the Task's byte budget what the series holds, and what its metadata announces."""
    for instance in list(series.instances.values()):
        budget.announce(instance.sop_uid, instance.announced_bytes)


def run_collecting(parallelism: int, calls: list[Callable[[], None]]) -> list[BaseException | None]:
    """Run the calls, ``parallelism`` at a time; every call runs to its end, errors are returned."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(calls))), thread_name_prefix="series") as pool:
        futures = [pool.submit(call) for call in calls]
    return [future.exception() for future in futures]


class Span:
    """From the first start to the last end of a step that runs in several threads at once."""

    def __init__(self):
        self.first: float | None = None
        self.last: float | None = None
        self.active = 0  # timings under way (the live progress shows the step as running)
        self.lock = threading.Lock()

    def begin(self, now: float) -> None:
        with self.lock:
            self.first = now if self.first is None else min(self.first, now)
            self.active += 1

    def end(self, now: float) -> None:
        with self.lock:
            self.last = now if self.last is None else max(self.last, now)
            self.active = max(0, self.active - 1)

    @contextmanager
    def timing(self, monotonic: Callable[[], float]) -> Iterator[None]:
        self.begin(monotonic())
        try:
            yield
        finally:
            self.end(monotonic())

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0


def missing_instances(blobstore: BlobStore, study: SourceStudy) -> set[str]:
    """Expected (step 1 and 2) minus stored: a partial transfer is never called complete."""
    stored = blobstore.stored_sop_uids(study.study_uid)
    expected = {sop for series in study.series for sop in series.instances}
    return expected - stored
