"""WADO-RS (PS3.18 §10.4): multipart/related answers streamed from the blob store, and frames.

Files are sent as stored, byte for byte (what ``transfer-syntax=*`` asks for); a part
names its transfer syntax in its Content-Type. Nothing is transcoded, so a request for a
specific other transfer syntax is a 406 rather than a silent substitution. The boundary
is random per response (a fixed one can occur inside pixel data).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pydicom

from fhirimg.errors import FhirError, NotAcceptable

from .index import StoredInstance

READ_BLOCK = 1 << 20
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


@dataclass
class MediaRange:
    type: str
    params: dict[str, str]


def parse_accept(header: str) -> list[MediaRange]:
    """Media ranges of an Accept header (quoted parameter values may contain ';' or ',')."""
    ranges = []
    for item in split_outside_quotes(header or "", ","):
        pieces = split_outside_quotes(item, ";")
        if not pieces or not pieces[0].strip():
            continue
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append(MediaRange(pieces[0].strip().lower(), params))
    return ranges


def split_outside_quotes(text: str, separator: str) -> list[str]:
    out, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


def accepted_transfer_syntax(header: str, part_type: str = "application/dicom") -> str | None:
    """The transfer syntax a multipart retrieve asks for ('*', a UID, or None = as stored).

    Raises 406 when no media range of the Accept header can be served.
    """
    ranges = parse_accept(header) or [MediaRange("*/*", {})]
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            return None
        # type="*/*" is what dicomweb-client sends by default (PS3.18 8.7: the default media
        # type of the resource then applies).
        if media.type == "multipart/related" and media.params.get("type", part_type) in (
                part_type, "*/*", part_type.split("/")[0] + "/*"):
            return media.params.get("transfer-syntax")
    raise NotAcceptable(f"cannot answer {header!r}: this resource is served as "
                        f'multipart/related; type="{part_type}"')


def check_transfer_syntax(instances: list[StoredInstance], wanted: str | None) -> None:
    """Files are served as stored: only '*', no preference, or the stored syntax itself."""
    if wanted in (None, "", "*"):
        return
    other = [i for i in instances if i.transfer_syntax_uid != wanted]
    if other:
        raise NotAcceptable(f"transfer syntax {wanted} is not available for {len(other)} instance(s) "
                            f"(stored as {other[0].transfer_syntax_uid}); ask with transfer-syntax=*")


def new_boundary() -> str:
    return "fhirimg-" + uuid.uuid4().hex + uuid.uuid4().hex


def multipart_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def stream_instances(instances: Iterable[StoredInstance], paths: Iterable[Path], boundary: str) -> Iterator[bytes]:
    """The multipart body, one file at a time in blocks: memory stays bounded by READ_BLOCK."""
    for instance, path in zip(instances, paths):
        with open(path, "rb") as fh:
            size = path.stat().st_size
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax="
                   f"{instance.transfer_syntax_uid}\r\nContent-Length: {size}\r\n\r\n").encode()
            while True:
                block = fh.read(READ_BLOCK)
                if not block:
                    break
                yield block
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` (PS3.18 8.3.3.1.3): 1-based frame numbers, at most 10 000 of them."""
    items = text.split(",")
    if len(items) > 10_000 or not all(i.isdigit() and len(i) <= 6 and int(i) >= 1 for i in items):
        raise FhirError(400, "invalid", f"frame list {text[:80]!r} must be 1-based frame numbers "
                                       "separated by commas", ["frames"])
    numbers = [int(i) for i in items]
    if len(set(numbers)) != len(numbers):
        # 2 600 copies of 50 frames in one URL held 326 MB per request: each frame once.
        raise FhirError(400, "invalid", "the frame list names a frame more than once", ["frames"])
    return numbers


def read_pixel_data(path: Path, instance: StoredInstance) -> Iterator[bytes]:
    """The Pixel Data bulk data (PS3.18 8.4) of an uncompressed instance, as one part."""
    if instance.transfer_syntax_uid not in UNCOMPRESSED:
        raise NotAcceptable(f"pixel data bulk data is served for uncompressed data only; instance "
                            f"{instance.sop_uid} is stored as {instance.transfer_syntax_uid}: use frames "
                            "of an uncompressed copy or retrieve the instance")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise FhirError(404, "not-found", f"instance {instance.sop_uid} has no pixel data")
    yield bytes(ds.PixelData)


def pixel_reference(attributes: dict, instance: StoredInstance, uri: str) -> dict:
    """An image's metadata names where its Pixel Data is (BulkDataURI), as PS3.18 F.2.6 lets
    metadata do for a value it leaves out."""
    if "00280010" not in attributes:  # no Rows: not an image
        return attributes
    vr = "OW" if instance.transfer_syntax_uid in UNCOMPRESSED else "OB"
    return {**attributes, "7FE00010": {"vr": vr, "BulkDataURI": uri}}


def read_frames(path: Path, instance: StoredInstance, numbers: list[int]) -> Iterator[bytes]:
    """Frames of uncompressed pixel data; compressed data would need a codec, so it is a 406."""
    if instance.transfer_syntax_uid not in UNCOMPRESSED:
        raise NotAcceptable(f"frames are served for uncompressed data only; instance {instance.sop_uid} is "
                            f"stored as {instance.transfer_syntax_uid}: retrieve the instance instead")
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise FhirError(404, "not-found", f"instance {instance.sop_uid} has no pixel data")
    bits = int(ds.BitsAllocated)
    frame_size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if bits < 8 or frame_size <= 0:
        raise NotAcceptable(f"frames of {bits}-bit pixel data are not served; retrieve the instance")
    missing = [n for n in numbers if n > count]
    if missing:
        raise FhirError(404, "not-found", f"instance {instance.sop_uid} has {count} frame(s); "
                                          f"no frame {missing[0]}")
    data = memoryview(ds.PixelData)
    # One frame copied at a time, as the answer is sent (the pixel data is held once).
    return (bytes(data[(n - 1) * frame_size:n * frame_size]) for n in numbers)


def stream_frames(frames: Iterable[bytes], boundary: str) -> Iterator[bytes]:
    for frame in frames:
        yield (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {len(frame)}\r\n\r\n").encode()
        yield frame
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
