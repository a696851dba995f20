"""WADO-RS (PS3.18 §10.4): multipart/related answers streamed from the blob store, and frames.

An instance whose stored transfer syntax the request accepts (always so with
``transfer-syntax=*``) is sent as stored, byte for byte, streamed in blocks; others are
transcoded one at a time (``codecs``), each part naming its transfer syntax. What cannot be
served as asked is a 406 decided before the first byte (``negotiate.pick``). The boundary
is random per response (a fixed one can occur inside pixel data).
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pydicom

from fhirimg.errors import FhirError, NotAcceptable

from . import codecs
from .index import StoredInstance
from .negotiate import Choice, pick, require_frame_numbers

READ_BLOCK = 1 << 20
Opener = Callable[[str], BinaryIO]  # an index row's key -> its stored object, readable and seekable
LITTLE_ENDIAN_NATIVE = frozenset({codecs.IMPLICIT_LE, codecs.EXPLICIT_LE})
# Uncompressed frames of these are rendered from their bytes; YBR and palette colour and
# bit-packed data are decoded by pydicom (colour conversion, lookup tables, unpacking).
READ_AS_IS = frozenset({"MONOCHROME1", "MONOCHROME2", "RGB"})


def plan_instances(instances: list[StoredInstance], choices: list[Choice]) -> list[tuple[StoredInstance, str]]:
    """Each instance with the syntax it will be sent in; a 406 if any cannot be served (the
    whole answer or nothing, never a study with holes)."""
    return [(i, pick(choices, i.transfer_syntax_uid, i.attributes, f"instance {i.sop_uid}", i.size)[1])
            for i in instances]


def new_boundary() -> str:
    return "fhirimg-" + uuid.uuid4().hex + uuid.uuid4().hex


def multipart_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def stream_instances(planned: Iterable[tuple[StoredInstance, str]], open_object: Opener, boundary: str,
                     verify: bool = False, scratch: str | None = None) -> Iterator[bytes]:
    """The multipart body, one object at a time: an object sent as stored is read in blocks
    (memory bounded by READ_BLOCK); a transcoded one is held whole while it is sent.

    With ``verify`` each object's SHA-256 is compared with the index as it is read; on a
    mismatch the stream stops before its closing delimiter, so the client sees a broken
    answer rather than silently corrupt data (the log names the instance)."""
    for instance, syntax in planned:
        if syntax == instance.transfer_syntax_uid:
            yield part_head(boundary, syntax, instance.size)
            yield from stored_blocks(instance, open_object, verify)
        else:
            data = transcoded(instance, open_object, syntax, verify, scratch)
            yield part_head(boundary, syntax, len(data))
            yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def part_head(boundary: str, syntax: str, size: int) -> bytes:
    return (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()


def stored_blocks(instance: StoredInstance, open_object: Opener, verify: bool) -> Iterator[bytes]:
    hasher = hashlib.sha256() if verify and instance.sha256 else None
    with open_object(instance.path) as fh:
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


def read_object(instance: StoredInstance, open_object: Opener, verify: bool = False) -> bytes:
    """The whole stored object, checked as it is read (for decoding or transcoding)."""
    return b"".join(stored_blocks(instance, open_object, verify))


def transcoded(instance: StoredInstance, open_object: Opener, syntax: str, verify: bool,
               scratch: str | None = None) -> bytes:
    try:
        return codecs.transcode(read_object(instance, open_object, verify), syntax, scratch)
    except codecs.CannotTranscode as exc:
        # Only reached for what the index could not foresee (a corrupt codestream): the
        # stream stops without its closing delimiter, and the log names the instance.
        raise CorruptObject(f"instance {instance.sop_uid}: {exc}") from exc


class CorruptObject(Exception):
    """A stored object that is not what the index recorded (found while streaming it)."""


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` (PS3.18 8.3.3.1.3): 1-based frame numbers, at most 10 000 of them."""
    items = text.split(",")
    # isascii: "²".isdigit() is true and int() refuses it.
    if len(items) > 10_000 or not all(i.isascii() and i.isdigit() and len(i) <= 6 and int(i) >= 1 for i in items):
        raise FhirError(400, "invalid", f"frame list {text[:80]!r} must be 1-based frame numbers "
                                       "separated by commas", ["frames"])
    numbers = [int(i) for i in items]
    if len(set(numbers)) != len(numbers):
        # 2 600 copies of 50 frames in one URL held 326 MB per request: each frame once.
        raise FhirError(400, "invalid", "the frame list names a frame more than once", ["frames"])
    return numbers


def read_pixel_data(open_object: Opener, instance: StoredInstance, choices: list[Choice],
                    scratch: str | None = None) -> tuple[str, str, Iterator[bytes]]:
    """The Pixel Data bulk data (PS3.18 8.4): (media type, syntax, parts). Uncompressed, one
    part holding every frame; encapsulated (as stored or transcoded), one part per frame,
    made as the answer is sent."""
    choice, target = pick(choices, instance.transfer_syntax_uid, instance.attributes, f"instance {instance.sop_uid}")
    if target in codecs.UNCOMPRESSED and instance.transfer_syntax_uid in LITTLE_ENDIAN_NATIVE:
        with open_object(instance.path) as fh:
            layout = pixel_layout(fh, instance)
            fh.seek(layout.offset)
            return "application/octet-stream", codecs.EXPLICIT_LE, iter([fh.read(layout.length)])
    if target in codecs.UNCOMPRESSED and decoded_size(instance.attributes) > codecs.MAX_TRANSCODED_BYTES:
        raise NotAcceptable(f"instance {instance.sop_uid}: its pixel data decoded is over "
                            f"{codecs.MAX_TRANSCODED_BYTES // 2**20} MiB; ask for its frames, or with "
                            "transfer-syntax=* for the stored fragments")
    choice, frames = read_frames(open_object, instance, None, [choice], scratch)
    first = next(frames)
    rest = (frame.data for frame in frames)
    if target in codecs.UNCOMPRESSED:  # one part: the frames one after the other
        return "application/octet-stream", codecs.EXPLICIT_LE, iter([first.data + b"".join(rest)])
    return first.media_type, target, chain_frames(first.data, rest)


def decoded_size(attributes: dict) -> int:
    """Bytes of an image's pixel data uncompressed, from its attributes."""
    value = 1
    for tag in ("00280010", "00280011", "00280002", "00280008"):
        value *= codecs.first_int(attributes, tag) or 1
    return value * ((codecs.first_int(attributes, "00280100") or 8) + 7) // 8


def pixel_source(open_object: Opener, instance: StoredInstance) -> codecs.PixelSource:
    """The object opened for reading frame by frame (the caller closes ``source.fh``)."""
    fh = open_object(instance.path)
    try:
        return codecs.PixelSource(fh, instance.sop_uid)
    except codecs.NoPixelData as exc:
        fh.close()
        raise FhirError(404, "not-found", str(exc)) from None
    except BaseException:
        fh.close()
        raise


def metadata_of(instance: StoredInstance, instance_url: str) -> dict:
    """An instance's metadata (PS3.18 10.4.1.2): its DICOM JSON without the File Meta
    group (not part of the data set, as Orthanc also leaves it out), bulk values as
    BulkDataURIs under the instance's URL, and the stored syntax as Available Transfer
    Syntax UID."""
    out = {}
    for tag, element in instance.attributes.items():
        if tag.startswith("0002"):
            continue
        if element.get("BulkDataURI") == "":
            element = {"vr": element["vr"], "BulkDataURI": f"{instance_url}/bulkdata/{tag}"}
        out[tag] = element
    out["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax_uid]}
    return dict(sorted(pixel_reference(out, instance, f"{instance_url}/bulkdata/7FE00010").items()))


def read_bulk_element(open_object: Opener, instance: StoredInstance, tag: int) -> bytes:
    """The value of a top-level bulk element (one the metadata gave a BulkDataURI)."""
    if "BulkDataURI" not in (instance.attributes.get(f"{tag:08X}") or {}):
        raise FhirError(404, "not-found", f"instance {instance.sop_uid} has no bulk data {tag:08X}")
    with open_object(instance.path) as fh:
        ds = pydicom.dcmread(fh, defer_size=1024)
        element = ds.get_item(tag)
        if element is None:
            raise FhirError(404, "not-found", f"instance {instance.sop_uid} has no bulk data {tag:08X}")
        value = ds[tag].value
    return value if isinstance(value, bytes) else bytes(value or b"")


def pixel_reference(attributes: dict, instance: StoredInstance, uri: str) -> dict:
    """An image's metadata names where its Pixel Data is (BulkDataURI), as PS3.18 F.2.6 lets
    metadata do for a value it leaves out."""
    if "00280010" not in attributes:  # no Rows: not an image
        return attributes
    vr = "OW" if instance.transfer_syntax_uid in codecs.NATIVE else "OB"
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
    # YBR_FULL_422 keeps two values a pixel, not three (PS3.3 C.7.6.3.1.2).
    samples = 2 if ds.get("PhotometricInterpretation") == "YBR_FULL_422" else int(ds.get("SamplesPerPixel", 1))
    frame_size = int(ds.Rows) * int(ds.Columns) * samples * bits // 8
    return PixelLayout(raw.value_tell, raw.length, frame_size, int(ds.get("NumberOfFrames", 1) or 1), bits)


def read_frames(open_object: Opener, instance: StoredInstance, numbers: list[int] | None,
                choices: list[Choice], scratch: str | None = None) -> tuple[Choice, Iterator[codecs.Frame]]:
    """Frames (None: all) in the first representation the request accepts that this
    instance can be given in: uncompressed frames of an uncompressed object are byte ranges
    of the stored file (nothing decoded); encapsulated ones are the stored fragments with
    ``*`` or their own media type, else decoded (and re-encoded) by ``codecs``, one at a
    time. The first frame is made before the answer starts, so an object that cannot be
    decoded is an error, not a broken stream."""
    choice, target = pick(choices, instance.transfer_syntax_uid, instance.attributes, f"instance {instance.sop_uid}")
    if instance.transfer_syntax_uid in LITTLE_ENDIAN_NATIVE and target in codecs.UNCOMPRESSED and numbers:
        return choice, native_frames(open_object, instance, numbers)
    source = pixel_source(open_object, instance)
    try:
        numbers = numbers or list(range(1, source.frames + 1))
        require_frame_numbers(numbers, source.frames, instance.sop_uid)
        try:
            first = source.frame(numbers[0], target, scratch)
        except Exception as exc:  # codec errors carry no common type
            raise NotAcceptable(f"instance {instance.sop_uid}: frame {numbers[0]} cannot be given as {target} "
                                f"({exc}); ask with transfer-syntax=* for the stored encoding") from exc
    except BaseException:
        source.fh.close()
        raise
    return choice, frames_from(source, first, numbers[1:], target, scratch)


def frames_from(source: codecs.PixelSource, first: codecs.Frame, numbers: list[int], target: str,
                scratch: str | None) -> Iterator[codecs.Frame]:
    """The frames, made one at a time; the object is closed when the answer ends or is
    closed, even after the first frame alone."""
    try:
        yield first
        for number in numbers:
            yield source.frame(number, target, scratch)
    finally:
        source.fh.close()


def chain_frames(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def native_frames(open_object: Opener, instance: StoredInstance, numbers: list[int]) -> Iterator[codecs.Frame]:
    fh = open_object(instance.path)
    try:
        layout = pixel_layout(fh, instance)
        if layout.bits < 8 or layout.frame_size <= 0:
            raise NotAcceptable(f"frames of {layout.bits}-bit pixel data are not served; retrieve the instance")
        # A frame count the pixel data is too short for counts only the frames it holds.
        held = min(layout.frames, layout.length // layout.frame_size)
        require_frame_numbers(numbers, held, instance.sop_uid)
    except BaseException:
        fh.close()
        raise
    return frames_of(fh, layout, numbers)


def frames_of(fh: BinaryIO, layout: PixelLayout, numbers: list[int]) -> Iterator[codecs.Frame]:
    """One frame read (a byte range) at a time, as the answer is sent."""
    with fh:
        for n in numbers:
            fh.seek(layout.offset + (n - 1) * layout.frame_size)
            yield codecs.Frame(fh.read(layout.frame_size), "application/octet-stream", codecs.EXPLICIT_LE)


def stream_frames(frames: Iterable[codecs.Frame], boundary: str) -> Iterator[bytes]:
    """Parts of frames, bulk data, rendered images or XML, each naming its media type and,
    for pixel data, its transfer syntax (PS3.18 8.7.3.3)."""
    for frame in frames:
        syntax = f"; transfer-syntax={frame.transfer_syntax}" if frame.transfer_syntax else ""
        yield (f"--{boundary}\r\nContent-Type: {frame.media_type}{syntax}\r\n"
               f"Content-Length: {len(frame.data)}\r\n\r\n").encode()
        yield frame.data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def frame_pixels(open_object: Opener, instance: StoredInstance, number: int):
    """(array, header) of one frame, for rendering. An uncompressed grey or RGB frame is a
    byte range of the stored object read into an array as its index attributes describe it
    (only the header is parsed: a 512x512 CT renders in a third of the time); anything else
    is decoded alone, a palette applied."""
    from .rendered import JsonHeader
    header = JsonHeader(instance.attributes)
    photometric = str(header.get("PhotometricInterpretation", ""))
    if instance.transfer_syntax_uid in LITTLE_ENDIAN_NATIVE and photometric in READ_AS_IS \
            and int(header.get("BitsAllocated", 0) or 0) >= 8:
        [frame] = native_frames(open_object, instance, [number])
        return native_array(frame.data, header), header
    source = pixel_source(open_object, instance)
    with source.fh:
        require_frame_numbers([number], source.frames, instance.sop_uid)
        array = source.decoded(number)  # YBR becomes RGB, 1-bit data is unpacked
        if photometric == "PALETTE COLOR":  # while the object is open: its tables may be deferred
            from pydicom.pixels import apply_color_lut
            array = apply_color_lut(array, source.ds)
        return array, source.ds


def native_array(data: bytes, header) -> np.ndarray:
    """Uncompressed pixel data as an array: rows x columns (x samples), the bits above
    Bits Stored cleared (unsigned) or sign-extended (signed), as PS3.5 8.1.1 lays it out."""
    rows, columns = int(header.get("Rows")), int(header.get("Columns"))
    samples, allocated = int(header.get("SamplesPerPixel", 1)), int(header.get("BitsAllocated"))
    stored, signed = int(header.get("BitsStored", allocated)), int(header.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    array = np.frombuffer(data, dtype=dtype)
    if samples > 1:
        planar = int(header.get("PlanarConfiguration", 0))
        array = array.reshape(samples, rows, columns).transpose(1, 2, 0) if planar else \
            array.reshape(rows, columns, samples)
    else:
        array = array.reshape(rows, columns)
    if stored < allocated:
        shift = allocated - stored
        array = (array << shift) >> shift if signed else array & ((1 << stored) - 1)
    return array
