"""Check a received part with pydicom before it may enter the blob store.

A part is accepted only if it is a complete DICOM Part-10 file (PS3.10 §7.1: preamble,
``DICM``, file meta group) whose Study/Series/SOP Instance UIDs are valid and are the
ones that were asked for. pydicom reads lazily and silently accepts a file cut short
inside its pixel data, so the element lengths are checked against the file size here.

Two paths give the same answer. ``inspect_staged`` works on the first bytes of the part,
kept in memory while it streamed (``StagedFile.head``): pydicom's element parser reads
the header up to the pixel data, the pixel data element's length is checked against the
part's size, and each element's DICOM JSON comes from an ``ElementJsonCache`` (pydicom
converts an element the first time its bytes are seen; within a series most header
elements are byte-identical). That is ~7x cheaper than building a pydicom Dataset of
the whole file and converting it, which cost ~2.7 ms per instance and capped one
reader at ~120 MB/s. Anything the fast path does not cover exactly (a header larger
than the kept bytes, implicit VR or big endian, deflate, UN elements, elements after
the pixel data, any inconsistency) goes through ``inspect_part10`` on the file.
"""
from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

from .blobstore import InstanceRecord
from .uids import is_valid_uid

UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
CHARSET_TAG = 0x00080005


class RejectedPart(Exception):
    """The part is not an instance we may store; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str, sop_uid: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sop_uid = sop_uid


@dataclass
class Expectation:
    """What a retrieve asked for: the study, the series, and which SOP instances may come.

    A whole-study request names no series (``series_uid`` None): each instance must then be
    in the series ``series_of`` lists it in."""

    study_uid: str
    series_uid: str | None
    sop_uids: frozenset[str]
    series_of: Mapping[str, str] | None = None  # SOP Instance UID -> its Series Instance UID

    def series_for(self, sop_uid: str) -> str | None:
        """The series an instance was asked for in (None: not asked for at all)."""
        if self.series_uid is not None:
            return self.series_uid
        return (self.series_of or {}).get(sop_uid)

    @classmethod
    def whole_study(cls, study_uid: str, listed: Mapping[str, frozenset[str]]) -> "Expectation":
        """``listed``: each series' instances, as step 1 listed them."""
        series_of = {sop: series for series, sops in listed.items() for sop in sops}
        return cls(study_uid, None, frozenset(series_of), series_of)


def inspect_part10(path: str | os.PathLike, expected: Expectation | None) -> InstanceRecord:
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
    require_valid_uids(values, str(meta.get("MediaStorageSOPInstanceUID", values["sop_uid"])))
    return InstanceRecord(**values, instance_number=instance_number_of(ds),
                          attributes=json_attributes(ds))


def require_valid_uids(values: dict[str, str], media_storage_sop_uid: str) -> None:
    """Every UID of the record is a valid UID, and the file meta names the same SOP instance."""
    for name, value in values.items():
        if not is_valid_uid(value):
            raise RejectedPart("invalid-uid", f"{name} {value[:70]!r} is not a valid DICOM UID")
    if media_storage_sop_uid != values["sop_uid"]:
        raise RejectedPart("invalid-uid", "file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")


def instance_number_of(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def require_expected_uids(record: InstanceRecord, expected: Expectation | None) -> None:
    """What a retrieve asked for; a push (``expected`` None) may send any instance."""
    if expected is None:
        return
    series_uid = expected.series_for(record.sop_uid) or record.series_uid  # not asked for: the SOP check says so
    if record.study_uid != expected.study_uid or record.series_uid != series_uid:
        raise RejectedPart("unexpected-uid", f"part belongs to study {record.study_uid} series "
                           f"{record.series_uid}, not the one asked for", record.sop_uid)
    if record.sop_uid not in expected.sop_uids:
        raise RejectedPart("unexpected-uid", f"SOP instance {record.sop_uid} was not asked for",
                           record.sop_uid)


def json_attributes(ds: Dataset) -> dict:
    """DICOM JSON (PS3.18 F.2) of the dataset without pixel data or other bulk values."""
    light = Dataset()
    bulk = {}
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if int(tag) in PIXEL_TAGS:
            continue
        if elem.VR in BULK_VRS and (elem.length or 0) > BULK_THRESHOLD:
            bulk[f"{int(tag):08X}"] = bulk_marker(elem.VR)
            continue
        light[tag] = ds[tag]
    try:
        attributes = light.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                                        bulk_data_element_handler=lambda elem: None)
    except Exception as exc:  # pydicom raises assorted errors on malformed values
        raise RejectedPart("not-dicom", f"attributes cannot be converted to DICOM JSON: {exc}") from None
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    attributes.update(bulk)
    attributes["00020010"] = {"vr": "UI", "Value": [tsuid]}
    return attributes


def bulk_marker(vr: str) -> dict:
    """A bulk value left out of the stored DICOM JSON: metadata answers give its BulkDataURI
    (PS3.18 F.2.6), filled in with the instance's URL when served."""
    return {"vr": vr, "BulkDataURI": ""}


class ElementJsonCache:
    """DICOM JSON of header elements keyed by (tag, VR, value bytes, character set).

    Shared by the series readers of one transfer (dict reads and writes are atomic);
    values are small and the table is emptied when it reaches ``max_entries``, so it
    stays within a few MB. The cached dicts are shared: callers must not change them.
    """

    def __init__(self, max_entries: int = 20_000, max_value_bytes: int = 512):
        self.entries: dict = {}
        self.max_entries, self.max_value_bytes = max_entries, max_value_bytes

    def json_of(self, raw: RawDataElement, charset: bytes | None, encoding) -> dict:
        value = raw.value
        if value is None or len(value) > self.max_value_bytes:
            return element_json(convert_raw_data_element(raw, encoding=encoding))
        key = (raw.tag, raw.VR, value, charset)
        found = self.entries.get(key)
        if found is None:
            found = element_json(convert_raw_data_element(raw, encoding=encoding))
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[key] = found
        return found


def element_json(elem: DataElement) -> dict:
    return elem.to_json_dict(bulk_data_element_handler=lambda e: None, bulk_data_threshold=BULK_THRESHOLD)


class NotCovered(Exception):
    """The fast path cannot decide this part exactly; the file-based check will."""


def inspect_staged(staged, expected: Expectation | None, cache: ElementJsonCache) -> InstanceRecord:
    """Check a staged part from its in-memory head when possible, else from its file."""
    try:
        return inspect_head(staged.head, staged.size, staged.tail, expected, cache)
    except NotCovered:
        return inspect_part10(staged.path, expected)


def inspect_head(head: bytes, size: int, tail: bytes, expected: Expectation | None,
                 cache: ElementJsonCache) -> InstanceRecord:
    """The fast path of ``inspect_part10``: same checks, same record, or NotCovered."""
    if size < 132 or head[128:132] != b"DICM":
        raise RejectedPart("not-dicom", "no DICOM Part-10 preamble and 'DICM' prefix (PS3.10 7.1)")
    fp = io.BytesIO(head)
    fp.seek(132)
    meta = read_meta_uids(fp)
    syntax = UID(meta.get(0x00020010, ""))
    if not syntax.is_transfer_syntax or syntax.is_implicit_VR or not syntax.is_little_endian or syntax.is_deflated:
        raise NotCovered()
    try:
        attributes = header_json(fp, cache)
    except NotCovered:
        raise
    except Exception as exc:  # pydicom raises assorted errors on malformed values
        raise NotCovered() from exc
    require_pixel_data_ends_the_part(fp, head, size, tail)
    attributes["00020010"] = {"vr": "UI", "Value": [str(syntax)]}
    values = {"study_uid": json_uid(attributes, "0020000D"), "series_uid": json_uid(attributes, "0020000E"),
              "sop_uid": json_uid(attributes, "00080018"), "sop_class_uid": json_uid(attributes, "00080016"),
              "transfer_syntax_uid": str(syntax)}
    require_valid_uids(values, meta.get(0x00020003, values["sop_uid"]))
    record = InstanceRecord(**values, instance_number=json_instance_number(attributes), attributes=attributes)
    require_expected_uids(record, expected)
    return record


def read_meta_uids(fp) -> dict[int, str]:
    """The file meta group (always explicit VR little endian): its UI values by tag."""
    uids = {}
    for raw in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2):
        if raw.length and (raw.value is None or len(raw.value) != raw.length):
            raise NotCovered()
        if raw.VR == "UI" and raw.value:
            uids[int(raw.tag)] = raw.value.rstrip(b"\0 ").decode("ascii", "replace")
    return uids


def header_json(fp, cache: ElementJsonCache) -> dict:
    """DICOM JSON of the top-level elements before the pixel data, as json_attributes makes it."""
    attributes: dict = {}
    charset, encoding = None, default_encoding
    for raw in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag in PIXEL_TAGS,
                                      encoding=encoding):
        tag = int(raw.tag)
        if isinstance(raw, DataElement):  # an undefined-length sequence, parsed by pydicom
            attributes[f"{tag:08X}"] = element_json(raw)
            continue
        if raw.VR == "UN" or raw.VR is None or raw.length == UNDEFINED_LENGTH:
            raise NotCovered()
        if raw.length and (raw.value is None or len(raw.value) != raw.length):
            raise NotCovered()  # the header goes on past the bytes kept in memory
        if tag == CHARSET_TAG:
            charset = raw.value
            encoding = convert_encodings(convert_raw_data_element(raw).value)
        if raw.VR in BULK_VRS and raw.length > BULK_THRESHOLD:
            attributes[f"{tag:08X}"] = bulk_marker(raw.VR)
            continue
        attributes[f"{tag:08X}"] = cache.json_of(raw, charset, encoding)
    return attributes


_PIXEL_HEADER = struct.Struct("<HH2s2sL")


def require_pixel_data_ends_the_part(fp, head: bytes, size: int, tail: bytes) -> None:
    """The header parse stopped at the pixel data: its value must end exactly at the part's end."""
    position = fp.tell()
    if position == size:
        return  # no pixel data (a structured report, a presentation state), all read
    if position + 12 > len(head):
        raise NotCovered()
    group, element, vr, _, length = _PIXEL_HEADER.unpack_from(head, position)
    if (group << 16 | element) not in PIXEL_TAGS or vr not in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV"):
        raise NotCovered()
    if length == UNDEFINED_LENGTH:
        if not tail.endswith(SEQUENCE_DELIMITER_LE):
            raise RejectedPart("truncated", "encapsulated pixel data without its sequence delimiter")
        return
    end = position + 12 + length
    if end > size:
        raise RejectedPart("truncated", f"element ({group:04X},{element:04X}) ends past the end of the file "
                                        f"({size} bytes)")
    if end < size:
        raise NotCovered()  # elements after the pixel data: the file-based check reads them


def json_uid(attributes: dict, key: str) -> str:
    values = (attributes.get(key) or {}).get("Value") or []
    return str(values[0]) if len(values) == 1 and isinstance(values[0], str) else ""


def json_instance_number(attributes: dict) -> int | None:
    values = (attributes.get("00200013") or {}).get("Value") or []
    return values[0] if len(values) == 1 and isinstance(values[0], int) else None
