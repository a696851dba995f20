"""The committer thread: groups what queued while it was busy, hands errors back to the series that met them."""
from __future__ import annotations

import threading

import pytest

from fhirimg.transfer.committer import GroupCommitter, SeriesTicket
from fhirimg.transfer.dicomcheck import ElementJsonCache, Expectation, inspect_staged

from .dicomfactory import make_study


class RecordingStore:
    """A real BlobStore whose commit_many can be held back or made to fail, and records its groups."""

    def __init__(self, blobstore, fail_first: bool = False):
        self.blobstore, self.fail_first = blobstore, fail_first
        self.groups: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def commit_many(self, items):
        self.groups.append(len(items))
        self.entered.set()
        self.release.wait(10)
        if self.fail_first and len(self.groups) == 1:
            for staged, _ in items:
                staged.discard()
            raise OSError(28, "No space left on device")
        return self.blobstore.commit_many(items)


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
