"""The committer thread: groups what queued while it was busy, hands errors back to the series that met them."""
from __future__ import annotations

import threading
import time

import pytest

from fhirimg.transfer.committer import GroupCommitter, SeriesTicket
from fhirimg.transfer.dicomcheck import ElementJsonCache, Expectation, inspect_staged

from .dicomfactory import make_study


class RecordingStore:
    """A real BlobStore whose place (and index_placed) can be held back or made to fail, and
    records the groups each stage got."""

    def __init__(self, blobstore, fail_first: bool = False, fail_first_index: bool = False):
        self.blobstore, self.fail_first, self.fail_first_index = blobstore, fail_first, fail_first_index
        self.groups: list[int] = []  # sizes of the groups placed
        self.indexed: list[int] = []  # sizes of the index transactions
        self.release = threading.Event()
        self.entered = threading.Event()
        self.index_release = threading.Event()
        self.index_release.set()
        self.index_entered = threading.Event()

    def place(self, items):
        self.groups.append(len(items))
        self.entered.set()
        self.release.wait(10)
        if self.fail_first and len(self.groups) == 1:
            for staged, _ in items:
                staged.discard()
            raise OSError(28, "No space left on device")
        return self.blobstore.place(items)

    def index_placed(self, records):
        self.indexed.append(len(records))
        self.index_entered.set()
        self.index_release.wait(10)
        if self.fail_first_index and len(self.indexed) == 1:
            raise OSError(5, "Input/output error")
        return self.blobstore.index_placed(records)


def staged_instances(blobstore, study, series_index=0):
    series = study.series[series_index]
    expected = Expectation(study.study_uid, series.series_uid, frozenset(series.instances))
    out = []
    for sop, data in series.instances.items():
        staged = blobstore.open_staging()
        staged.write(data)
        out.append((staged, inspect_staged(staged, expected, ElementJsonCache())))
    return out


def test_instances_queued_while_a_commit_runs_are_placed_together(blobstore):
    study = make_study(series=1, instances=6)
    store = RecordingStore(blobstore)
    placed = []
    committer = GroupCommitter(store, placed.append)
    ticket = SeriesTicket(set())
    items = staged_instances(blobstore, study)
    committer.submit(ticket, *items[0])
    assert store.entered.wait(5)  # the first instance is placed at once, alone
    for item in items[1:]:
        committer.submit(ticket, *item)
    store.release.set()
    committer.flush(ticket)
    committer.close()
    assert store.groups == [1, 5]
    assert {r.sop_uid for r in placed} == set(study.instances)
    assert blobstore.stored_sop_uids(study.study_uid) == set(study.instances)
    assert list(blobstore.staging.iterdir()) == []


def test_a_failed_group_is_handed_back_to_its_series_and_the_committer_goes_on(blobstore):
    study = make_study(series=2, instances=2)
    store = RecordingStore(blobstore, fail_first=True)
    store.release.set()
    committer = GroupCommitter(store, lambda record: None)
    first, second = SeriesTicket(set()), SeriesTicket(set())
    failed_items = staged_instances(blobstore, study, 0)
    for item in failed_items:
        committer.submit(first, *item)
    with pytest.raises(OSError):
        committer.flush(first)
    assert first.wanted == {record.sop_uid for _, record in failed_items}  # the fallback fetches them again
    committer.flush(first)  # the error is raised once
    for item in staged_instances(blobstore, study, 1):
        committer.submit(second, *item)
    committer.flush(second)
    committer.close()
    assert blobstore.stored_sop_uids(study.study_uid) == set(study.series[1].instances)
    assert list(blobstore.staging.iterdir()) == []


def test_groups_placed_while_an_index_transaction_runs_are_indexed_together(blobstore):
    """Placing (the disk) and indexing (the database, the ImagingStudy's merge) overlap: the
    next groups are synced while a transaction runs, then indexed in one transaction."""
    study = make_study(series=1, instances=7)
    store = RecordingStore(blobstore)
    store.release.set()
    store.index_release.clear()
    placed = []
    committer = GroupCommitter(store, placed.append, max_instances=2)
    ticket = SeriesTicket(set())
    items = staged_instances(blobstore, study)
    committer.submit(ticket, *items[0])
    assert store.index_entered.wait(5)  # the first instance is indexed alone, and held there
    for item in items[1:]:
        committer.submit(ticket, *item)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until all six wait, placed, for the indexer
        if sum(len(group) for group, _ in list(committer.placed.queue)) == 6:
            break
        time.sleep(0.01)
    assert store.groups[0] == 1 and sum(store.groups) == 7 and max(store.groups) <= 2  # placed meanwhile
    store.index_release.set()
    committer.flush(ticket)
    committer.close()
    assert store.indexed == [1, 6]
    assert {r.sop_uid for r in placed} == set(study.instances)
    assert blobstore.stored_sop_uids(study.study_uid) == set(study.instances)
    assert committer.busy > 0
    assert list(blobstore.staging.iterdir()) == []


def test_a_failed_index_transaction_hands_its_instances_back(blobstore):
    study = make_study(series=1, instances=3)
    store = RecordingStore(blobstore, fail_first_index=True)
    store.release.set()
    placed = []
    committer = GroupCommitter(store, placed.append)
    ticket = SeriesTicket(set())
    items = staged_instances(blobstore, study)
    for item in items:
        committer.submit(ticket, *item)
    with pytest.raises(OSError):
        committer.flush(ticket)
    assert ticket.wanted == {record.sop_uid for _, record in items} - {r.sop_uid for r in placed}
    assert ticket.wanted  # the failed transaction's instances are fetched again
    committer.close()
    assert blobstore.stored_sop_uids(study.study_uid) == {r.sop_uid for r in placed}
    assert list(blobstore.staging.iterdir()) == []


def test_a_study_stream_part_checked_before_the_listing_is_handed_over_when_the_listing_comes(blobstore):
    """ListingMatch: the listing's arrival (on another thread) hands over the parts waiting
    for it at once, not when the stream's next part happens to arrive; a part of a series
    the listing does not name is rejected then."""
    from concurrent.futures import Future

    from fhirimg.transfer.retrieve import ListingMatch, SeriesJob
    from fhirimg.transfer.qido import SourceSeries

    study = make_study(series=2, instances=2)
    listed, unlisted = study.series
    handed, rejected = [], []

    class Recorder:
        def hand_over(self, staged, record, job):
            handed.append((record.sop_uid, job.series.series_uid if job else None))

        def reject_part(self, staged, exc, expectation):
            staged.discard()
            rejected.append(exc.sop_uid)

    jobs: Future = Future()
    known: dict = {}
    match = ListingMatch(Recorder(), study.study_uid, jobs, known)
    parts = staged_instances(blobstore, study, 0) + staged_instances(blobstore, study, 1)
    for checked in parts:
        match.offer(checked, None)  # checked before the listing: no UIDs asked for yet
    assert handed == [] and len(match.pending) == 4
    job = SeriesJob(study.study_uid, SourceSeries(listed.series_uid), set(listed.instances),
                    frozenset(listed.instances))
    jobs.set_result({listed.series_uid: job})  # the listing thread's doing
    assert sorted(handed) == sorted((sop, listed.series_uid) for sop in listed.instances)
    assert sorted(rejected) == sorted(unlisted.instances) and match.pending == []
    assert known == {listed.series_uid: job}
    match.close()
    for staged, record in parts[:2]:
        staged.discard()
