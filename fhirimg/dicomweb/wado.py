"""WADO-RS (PS3.18 §10.4): multipart/related answers streamed from the blob store, and frames.

Files are sent as stored, byte for byte (what ``transfer-syntax=*`` asks for); a part
names its transfer syntax in its Content-Type. Nothing is transcoded, so a request for a
specific other transfer syntax is a 406 rather than a silent substitution. The boundary
is random per response (a fixed one can occur inside pixel data).
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import pydicom

from fhirimg.errors import FhirError, NotAcceptable

from .index import StoredInstance

READ_BLOCK = 1 << 20
Opener = Callable[[str], BinaryIO]  # an index row's key -> its stored object, readable and seekable
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


def stream_instances(instances: Iterable[StoredInstance], open_object: Opener, boundary: str,
                     verify: bool = False) -> Iterator[bytes]:
    """The multipart body, one object at a time in blocks: memory stays bounded by READ_BLOCK.

    With ``verify`` each object's SHA-256 is compared with the index as it is sent; on a
    mismatch the stream stops before its closing delimiter, so the client sees a broken
    answer rather than silently corrupt data (the log names the instance)."""
    for instance in instances:
        hasher = hashlib.sha256() if verify and instance.sha256 else None
        with open_object(instance.path) as fh:
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax="
                   f"{instance.transfer_syntax_uid}\r\nContent-Length: {instance.size}\r\n\r\n").encode()
            sent = 0
            while sent < instance.size:
                block = fh.read(min(READ_BLOCK, instance.size - sent))
                if not block:
                    raise CorruptObject(f"instance {instance.sop_uid}: the stored object ends after {sent} of "
                                        f"{instance.size} bytes")
                if hasher is not None:
                    hasher.update(block)
                sent += len(block)
                yield block
        if hasher is not None and hasher.hexdigest() != instance.sha256:
            raise CorruptObject(f"instance {instance.sop_uid}: the stored object's SHA-256 differs from the index")
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


class CorruptObject(Exception):
    """A stored object that is not what the index recorded (found while streaming it)."""


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


def read_pixel_data(open_object: Opener, instance: StoredInstance) -> Iterator[bytes]:
    """The Pixel Data bulk data (PS3.18 8.4) of an uncompressed instance, as one part."""
    if instance.transfer_syntax_uid not in UNCOMPRESSED:
        raise NotAcceptable(f"pixel data bulk data is served for uncompressed data only; instance "
                            f"{instance.sop_uid} is stored as {instance.transfer_syntax_uid}: use frames "
                            "of an uncompressed copy or retrieve the instance")
    with open_object(instance.path) as fh:
        layout = pixel_layout(fh, instance)
        fh.seek(layout.offset)
        yield fh.read(layout.length)


def pixel_reference(attributes: dict, instance: StoredInstance, uri: str) -> dict:
    """An image's metadata names where its Pixel Data is (BulkDataURI), as PS3.18 F.2.6 lets
    metadata do for a value it leaves out."""
    if "00280010" not in attributes:  # no Rows: not an image
        return attributes
    vr = "OW" if instance.transfer_syntax_uid in UNCOMPRESSED else "OB"
    return {**attributes, "7FE00010": {"vr": vr, "BulkDataURI": uri}}


@dataclass
class PixelLayout:
    offset: int  # where the Pixel Data value starts in the object
    length: int
    frame_size: int
    frames: int
    bits: int


def pixel_layout(fh: BinaryIO, instance: StoredInstance) -> PixelLayout:
    """Where an uncompressed object's Pixel Data lies, read from its header only (pydicom
    defers the value): frames are then read as byte ranges, from a file or an S3 object."""
    ds = pydicom.dcmread(fh, defer_size=1024)
    if "PixelData" not in ds:
        raise FhirError(404, "not-found", f"instance {instance.sop_uid} has no pixel data")
    raw = ds.get_item("PixelData", keep_deferred=True)
    if getattr(raw, "value_tell", None) is None or raw.length in (None, 0xFFFFFFFF):
        raise NotAcceptable(f"instance {instance.sop_uid}: its pixel data is not stored natively")
    bits = int(ds.BitsAllocated)
    frame_size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    return PixelLayout(raw.value_tell, raw.length, frame_size, int(ds.get("NumberOfFrames", 1) or 1), bits)


def read_frames(open_object: Opener, instance: StoredInstance, numbers: list[int]) -> Iterator[bytes]:
    """Frames of uncompressed pixel data; compressed data would need a codec, so it is a 406."""
    if instance.transfer_syntax_uid not in UNCOMPRESSED:
        raise NotAcceptable(f"frames are served for uncompressed data only; instance {instance.sop_uid} is "
                            f"stored as {instance.transfer_syntax_uid}: retrieve the instance instead")
    fh = open_object(instance.path)
    try:
        layout = pixel_layout(fh, instance)
        if layout.bits < 8 or layout.frame_size <= 0:
            raise NotAcceptable(f"frames of {layout.bits}-bit pixel data are not served; retrieve the instance")
        missing = [n for n in numbers if n > layout.frames or n * layout.frame_size > layout.length]
        if missing:
            raise FhirError(404, "not-found", f"instance {instance.sop_uid} has {layout.frames} frame(s); "
                                              f"no frame {missing[0]}")
    except BaseException:
        fh.close()
        raise
    return frames_of(fh, layout, numbers)


def frames_of(fh: BinaryIO, layout: PixelLayout, numbers: list[int]) -> Iterator[bytes]:
    """One frame read (a byte range) at a time, as the answer is sent."""
    with fh:
        for n in numbers:
            fh.seek(layout.offset + (n - 1) * layout.frame_size)
            yield fh.read(layout.frame_size)


def stream_frames(frames: Iterable[bytes], boundary: str) -> Iterator[bytes]:
    for frame in frames:
        yield (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {len(frame)}\r\n\r\n").encode()
        yield frame
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
