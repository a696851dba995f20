"""The in-memory header check gives exactly the record of the file-based pydicom check, or defers to it."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from fhirimg.transfer.blobstore import HEAD_BYTES
from fhirimg.transfer.dicomcheck import (ElementJsonCache, Expectation, NotCovered, RejectedPart, inspect_head,
                                         inspect_part10, inspect_staged)

from .dicomfactory import UID_ROOT, make_dataset, make_study, to_part10


def rich_dataset(charset: str | None = None, undefined_sequences: bool = False) -> Dataset:
    """A CT header with the element kinds a real one has: PN groups, DS/IS lists, AT, US lists, SQ, OB, private."""
    rng = np.random.default_rng(7)
    ds = make_dataset(generate_uid(UID_ROOT), generate_uid(UID_ROOT), generate_uid(UID_ROOT), "CT", 3, 42,
                      16, 16, rng)
    if charset:
        ds.SpecificCharacterSet = charset
        ds.PatientName = "Müller^Jörg=ミュラー^ヨルグ" if charset == "ISO_IR 192" else "Müller^Jörg"
        ds.InstitutionName = "Hôpital Saint-Éloi"
    ds.OperatorsName = ["Smith^John", "Roe^Richard^^Dr."]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.WindowCenter, ds.WindowWidth = ["40", "400"], ["400", "2000"]
    ds.FrameIncrementPointer = 0x00181063
    ds.AcquisitionMatrix = [0, 512, 512, 0]
    ds.PatientAge, ds.ContentDate, ds.ContentTime = "056Y", "20261120", "101512.123"
    ds.ImageComments = "LT keeps a \\ backslash"
    ds.ProtocolName = "first\\second"  # LO: two values
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", "CT CHEST"
    ds.ReferencedImageSequence = Sequence([item])
    ds.ProcedureCodeSequence = Sequence([code])
    ds.RequestAttributesSequence = Sequence()
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091011, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0x00431028, "OB", bytes(2000))  # bulk: named by a marker, its value left out
    ds.SliceLocation = ""
    if undefined_sequences:
        ds.ReferencedImageSequence.is_undefined_length = True
        ds["ReferencedImageSequence"].is_undefined_length = True
    return ds


def check_both(tmp_path, data: bytes, expected: Expectation):
    """(record from the in-memory path, record from the file path) for the same bytes."""
    path = tmp_path / "part.dcm"
    path.write_bytes(data)
    fast = inspect_head(data[:HEAD_BYTES], len(data), data[-8:], expected, ElementJsonCache())
    slow = inspect_part10(path, expected)
    return fast, slow


def expectation_of(ds: Dataset) -> Expectation:
    return Expectation(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), frozenset([str(ds.SOPInstanceUID)]))


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
@pytest.mark.parametrize("undefined_sequences", [False, True])
def test_fast_check_gives_the_records_of_the_pydicom_file_check(tmp_path, charset, undefined_sequences):
    ds = rich_dataset(charset, undefined_sequences)
    fast, slow = check_both(tmp_path, to_part10(ds), expectation_of(ds))
    assert fast.attributes == slow.attributes
    assert fast.attributes["00431028"] == {"vr": "OB", "BulkDataURI": ""} and "7FE00010" not in fast.attributes
    assert (fast.study_uid, fast.series_uid, fast.sop_uid, fast.sop_class_uid, fast.transfer_syntax_uid,
            fast.instance_number) == (slow.study_uid, slow.series_uid, slow.sop_uid, slow.sop_class_uid,
                                      slow.transfer_syntax_uid, slow.instance_number)
    if charset == "ISO_IR 192":
        assert fast.attributes["00100010"]["Value"][0]["Ideographic"] == "ミュラー^ヨルグ"


def test_the_cache_gives_each_instance_its_own_values(tmp_path):
    """Headers of one series share most bytes; the UIDs and numbers that differ must not be mixed up."""
    study = make_study(series=1, instances=5)
    cache = ElementJsonCache()
    for sop, data in study.instances.items():
        expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
        path = tmp_path / f"{sop}.dcm"
        path.write_bytes(data)
        fast = inspect_head(data[:HEAD_BYTES], len(data), data[-8:], expected, cache)
        assert fast.attributes == inspect_part10(path, expected).attributes
        assert fast.sop_uid == sop
    assert 0 < len(cache.entries) < 5 * len(fast.attributes)  # shared elements were converted once


def test_encapsulated_pixel_data_is_covered_and_its_truncation_rejected(tmp_path):
    ds = rich_dataset()
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(300) + b"\xff\xd9", b"\xff\xd8" + bytes(200) + b"\xff\xd9"])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    data = to_part10(ds, JPEGBaseline8Bit)
    fast, slow = check_both(tmp_path, data, expectation_of(ds))
    assert fast.attributes == slow.attributes and fast.transfer_syntax_uid == JPEGBaseline8Bit
    cut = data[:-20]
    with pytest.raises(RejectedPart) as info:
        inspect_head(cut[:HEAD_BYTES], len(cut), cut[-8:], expectation_of(ds), ElementJsonCache())
    assert info.value.reason == "truncated"


def test_truncated_native_pixel_data_is_rejected_without_reading_the_file():
    study = make_study(series=1, instances=1)
    sop, data = next(iter(study.instances.items()))
    cut = data[:-100]
    expected = Expectation(study.study_uid, study.series[0].series_uid, frozenset([sop]))
    with pytest.raises(RejectedPart) as info:
        inspect_head(cut[:HEAD_BYTES], len(cut), cut[-8:], expected, ElementJsonCache())
    assert info.value.reason == "truncated"


@pytest.mark.parametrize("case", ["implicit-vr", "header-longer-than-head", "element-after-pixel-data",
                                  "header-cut-inside-head"])
def test_what_the_fast_path_does_not_cover_goes_to_the_file_check(tmp_path, blobstore, case):
    ds = rich_dataset()
    syntax = ExplicitVRLittleEndian
    if case == "implicit-vr":
        syntax = ImplicitVRLittleEndian
    elif case == "header-longer-than-head":
        ds.add_new(0x00091012, "UT", "x" * (HEAD_BYTES + 10))
    elif case == "element-after-pixel-data":
        ds.add_new(0xFFFCFFFC, "OB", bytes(16))  # Data Set Trailing Padding
    data = to_part10(ds, syntax)
    head = data[:HEAD_BYTES]
    if case == "header-cut-inside-head":
        head = data[:400]  # as if HEAD_BYTES were small: the parse runs out of bytes
    with pytest.raises(NotCovered):
        inspect_head(head, len(data), data[-8:], expectation_of(ds), ElementJsonCache())
    staged = blobstore.open_staging()
    staged.write(data)
    if case == "header-cut-inside-head":
        staged.head = bytearray(head)
    record = inspect_staged(staged, expectation_of(ds), ElementJsonCache())
    assert record.sop_uid == str(ds.SOPInstanceUID)
    staged.discard()


def test_fast_check_rejects_what_the_file_check_rejects(tmp_path):
    ds = rich_dataset()
    data = to_part10(ds)
    with pytest.raises(RejectedPart) as info:
        inspect_head(b"<html>" + bytes(200), 206, b"", expectation_of(ds), ElementJsonCache())
    assert info.value.reason == "not-dicom"
    other = Expectation(str(ds.StudyInstanceUID), generate_uid(), frozenset([str(ds.SOPInstanceUID)]))
    with pytest.raises(RejectedPart) as info:
        inspect_head(data[:HEAD_BYTES], len(data), data[-8:], other, ElementJsonCache())
    assert info.value.reason == "unexpected-uid"
    ds.SOPInstanceUID = "1.2.3.abc"
    data = to_part10(ds)
    with pytest.raises(RejectedPart) as info:
        inspect_head(data[:HEAD_BYTES], len(data), data[-8:], expectation_of(ds), ElementJsonCache())
    assert info.value.reason == "invalid-uid"


def test_staged_file_keeps_head_and_tail_across_writes(blobstore):
    staged = blobstore.open_staging()
    payload = bytes(range(256)) * 600  # 153 600 bytes in uneven writes
    for start in range(0, len(payload), 7000):
        staged.write(memoryview(payload)[start:start + 7000])
    assert bytes(staged.head) == payload[:HEAD_BYTES] and staged.tail == payload[-8:]
    staged.discard()
