"""Check a received part with pydicom before it may enter the blob store.

A part is accepted only if it is a complete DICOM Part-10 file (PS3.10 §7.1: preamble,
``DICM``, file meta group) whose Study/Series/SOP Instance UIDs are valid and are the
ones that were asked for. pydicom reads lazily and silently accepts a file cut short
inside its pixel data, so the element lengths are checked against the file size here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .blobstore import InstanceRecord
from .uids import is_valid_uid

UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


class RejectedPart(Exception):
    """The part is not an instance we may store; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str, sop_uid: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sop_uid = sop_uid


@dataclass
class Expectation:
    """What a retrieve asked for: the study, the series, and which SOP instances may come."""

    study_uid: str
    series_uid: str
    sop_uids: frozenset[str]


def inspect_part10(path: str | os.PathLike, expected: Expectation) -> InstanceRecord:
    """Parse and check one staged file; return its index record or raise RejectedPart."""
    size = os.path.getsize(path)
    require_part10_header(path, size)
    try:
        ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise RejectedPart("not-dicom", f"pydicom cannot read the part: {exc}") from None
    require_complete(ds, path, size)
    record = record_from_dataset(ds)
    require_expected_uids(record, expected)
    return record


def require_part10_header(path, size: int) -> None:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if size < 132 or head[128:132] != b"DICM":
        raise RejectedPart("not-dicom", "no DICOM Part-10 preamble and 'DICM' prefix (PS3.10 7.1)")


def require_complete(ds: Dataset, path, size: int) -> None:
    """Every top-level element must end inside the file (a truncated part does not)."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement) or elem.value_tell is None:
            continue
        if elem.length == UNDEFINED_LENGTH:
            if int(tag) in PIXEL_TAGS and not file_ends_with(path, size, SEQUENCE_DELIMITER_LE):
                raise RejectedPart("truncated", "encapsulated pixel data without its sequence delimiter")
            continue
        read = len(elem.value) if elem.value is not None else None
        if elem.value_tell + elem.length > size or (read is not None and read != elem.length):
            raise RejectedPart("truncated", f"element {tag} ends past the end of the file ({size} bytes)")


def file_ends_with(path, size: int, suffix: bytes) -> bool:
    with open(path, "rb") as fh:
        fh.seek(max(0, size - len(suffix)))
        return fh.read() == suffix


def record_from_dataset(ds: Dataset) -> InstanceRecord:
    meta = ds.file_meta
    values = {
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "transfer_syntax_uid": str(meta.get("TransferSyntaxUID", "")),
    }
    for name, value in values.items():
        if not is_valid_uid(value):
            raise RejectedPart("invalid-uid", f"{name} {value[:70]!r} is not a valid DICOM UID")
    if str(meta.get("MediaStorageSOPInstanceUID", values["sop_uid"])) != values["sop_uid"]:
        raise RejectedPart("invalid-uid", "file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    return InstanceRecord(**values, instance_number=instance_number_of(ds),
                          attributes=json_attributes(ds))


def instance_number_of(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def require_expected_uids(record: InstanceRecord, expected: Expectation) -> None:
    if record.study_uid != expected.study_uid or record.series_uid != expected.series_uid:
        raise RejectedPart("unexpected-uid", f"part belongs to study {record.study_uid} series "
                           f"{record.series_uid}, not the one asked for", record.sop_uid)
    if record.sop_uid not in expected.sop_uids:
        raise RejectedPart("unexpected-uid", f"SOP instance {record.sop_uid} was not asked for",
                           record.sop_uid)


def json_attributes(ds: Dataset) -> dict:
    """DICOM JSON (PS3.18 F.2) of the dataset without pixel data or other bulk values."""
    light = Dataset()
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if int(tag) in PIXEL_TAGS or (elem.VR in BULK_VRS and (elem.length or 0) > BULK_THRESHOLD):
            continue
        light[tag] = ds[tag]
    try:
        attributes = light.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                                        bulk_data_element_handler=lambda elem: None)
    except Exception as exc:  # pydicom raises assorted errors on malformed values
        raise RejectedPart("not-dicom", f"attributes cannot be converted to DICOM JSON: {exc}") from None
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    attributes["00020010"] = {"vr": "UI", "Value": [tsuid]}
    return attributes
