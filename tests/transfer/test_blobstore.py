"""Blob store: UID-only paths, atomic placement, content hash, index rows."""
from __future__ import annotations

import hashlib
import os

import pytest
from .dicomfactory import make_study

from fhirimg.errors import Invalid
from fhirimg.transfer.dicomcheck import Expectation, RejectedPart, inspect_part10
from fhirimg.transfer.uids import is_valid_uid, require_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.1", "0", "1.0.2", "2.25." + "9" * 58])
def test_valid_uids_are_accepted(uid):
    assert is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["", "1.2..3", "../1.2", "1.2/3", "1.02.3", "01.2", "1.2.", ".1",
                                 "1.2.3a", "2.25." + "9" * 61, "1 .2", None, 12])
def test_invalid_uids_are_refused(uid):
    assert not is_valid_uid(uid)


def test_require_uid_raises_400_naming_the_value():
    with pytest.raises(Invalid) as info:
        require_uid("../etc/passwd", "StudyInstanceUID")
    assert info.value.status == 400 and "StudyInstanceUID" in info.value.diagnostics


def test_path_is_built_from_validated_uids_only(blobstore):
    assert blobstore.relative_path("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(Invalid):
        blobstore.relative_path("1.2", "..", "1.2.3.4")


def test_absolute_path_refuses_escape(blobstore):
    with pytest.raises(ValueError):
        blobstore.absolute_path("../outside.dcm")


def stage(blobstore, data: bytes):
    staged = blobstore.open_staging()
    staged.write(data)
    return staged


def test_commit_places_file_atomically_with_hash_and_index_row(blobstore):
    study = make_study(series=1, instances=1)
    sop, data = next(iter(study.instances.items()))
    staged = stage(blobstore, data)
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
    record = inspect_part10(staged.path, expected)
    stored = blobstore.commit(staged, record)
    path = blobstore.absolute_path(stored.path)
    assert path.read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert not staged.path.exists()
    assert blobstore.stored_sop_uids(study.study_uid) == {sop}
    assert list(blobstore.staging.iterdir()) == []


def test_recommitting_an_instance_replaces_it_without_duplicates(blobstore):
    study = make_study(series=1, instances=1)
    sop, data = next(iter(study.instances.items()))
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
    for _ in range(2):
        staged = stage(blobstore, data)
        blobstore.commit(staged, inspect_part10(staged.path, expected))
    files = [p for p in blobstore.root.rglob("*.dcm")]
    assert len(files) == 1 and blobstore.stored_sop_uids(study.study_uid) == {sop}


def test_sweep_removes_old_staging_files_only(blobstore):
    old, new = stage(blobstore, b"old"), stage(blobstore, b"new")
    old.finish(), new.finish()
    os.utime(old.path, (0, 0))
    assert blobstore.sweep_staging(older_than_seconds=60) == 1
    assert not old.path.exists() and new.path.exists()


def test_non_dicom_part_is_rejected(blobstore):
    staged = stage(blobstore, b"<html>" + b"x" * 500)
    staged.finish()
    with pytest.raises(RejectedPart) as info:
        inspect_part10(staged.path, Expectation("1.2", "1.2.3", frozenset()))
    assert info.value.reason == "not-dicom"


def test_part_truncated_inside_pixel_data_is_rejected(blobstore):
    study = make_study(series=1, instances=1)
    sop, data = next(iter(study.instances.items()))
    staged = stage(blobstore, data[: len(data) - 100])
    staged.finish()
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
    with pytest.raises(RejectedPart) as info:
        inspect_part10(staged.path, expected)
    assert info.value.reason == "truncated"


def test_instance_of_another_series_is_rejected(blobstore):
    study = make_study(series=2, instances=1)
    sop, data = next(iter(study.series[1].instances.items()))
    staged = stage(blobstore, data)
    staged.finish()
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
    with pytest.raises(RejectedPart) as info:
        inspect_part10(staged.path, expected)
    assert info.value.reason == "unexpected-uid"


def test_instance_not_asked_for_is_rejected(blobstore):
    study = make_study(series=1, instances=2)
    (sop_a, _), (sop_b, data_b) = list(study.instances.items())
    staged = stage(blobstore, data_b)
    staged.finish()
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop_a]))
    with pytest.raises(RejectedPart) as info:
        inspect_part10(staged.path, expected)
    assert info.value.reason == "unexpected-uid" and info.value.sop_uid == sop_b


def test_json_attributes_leave_out_pixel_data_but_keep_headers(blobstore):
    study = make_study(series=1, instances=1)
    sop, data = next(iter(study.instances.items()))
    staged = stage(blobstore, data)
    staged.finish()
    record = inspect_part10(staged.path, Expectation(study.study_uid, study.series[0].series_uid,
                                                     frozenset([sop])))
    assert "7FE00010" not in record.attributes
    assert record.attributes["00080018"]["Value"] == [sop]
    assert record.attributes["00100020"]["Value"] == [study.patient_id]
    assert record.instance_number == 1 and record.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"

