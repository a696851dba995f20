"""Transfer syntaxes: which ones fhirimg can serve, decoding frames, transcoding objects.

Decoding and encoding go through GDCM (python-gdcm, BSD licence): one library reads every
syntax a PACS sends (JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE) and
writes every compressed one offered here. The alternatives were pylibjpeg-libjpeg (GPL-3,
which an Apache-2.0 server cannot ship) for JPEG lossless, plus pyjpegls and
pylibjpeg-openjpeg, three libraries covering less; measured on a 512x512 12-bit CT frame
they were no faster where they overlap (JPEG 2000 lossless decode 38 ms vs GDCM's 34 ms;
JPEG-LS 7 ms vs 13 ms). pydicom drives GDCM for decoding; GDCM's own
ImageChangeTransferSyntax encodes. Uncompressed and deflated targets are written by pydicom.

Everything here works on bytes of one object, so memory is bounded by one instance, and a
failure names the instance: the view turns it into a 406 before the first byte is sent
when it can be foreseen from the index (``cannot_transcode``), else the stream stops.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"

NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE})
UNCOMPRESSED = NATIVE | {DEFLATED_LE}
ENCAPSULATED = frozenset({RLE, JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1,
                          JPEG_LS, JPEG_LS_NEAR, J2K_LOSSLESS, J2K})
LOSSY = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR, J2K})
# A whole object is transcoded in memory (about four times its size at the peak): larger
# ones are served as stored, streamed. Frames are served from any size, one at a time.
MAX_TRANSCODED_BYTES = 256 * 2**20
# What a retrieve can be transcoded into (any stored syntax GDCM reads can be the source).
TARGETS = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, RLE, JPEG_LOSSLESS_SV1, JPEG_LS, J2K_LOSSLESS,
           JPEG_BASELINE)

# PS3.18 Table 8.7.3-5: the media types of frames and bulk data, their transfer syntaxes
# (the first is the default when the request names none).
FRAME_MEDIA = {
    "application/octet-stream": (EXPLICIT_LE,),
    "image/jpeg": (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1),
    "image/dicom-rle": (RLE,),
    "image/jls": (JPEG_LS, JPEG_LS_NEAR),
    "image/jp2": (J2K_LOSSLESS, J2K),
}
MEDIA_OF = {syntax: media for media, syntaxes in FRAME_MEDIA.items() for syntax in syntaxes}
MEDIA_OF.update({IMPLICIT_LE: "application/octet-stream", EXPLICIT_BE: "application/octet-stream",
                 DEFLATED_LE: "application/octet-stream"})


class CannotTranscode(Exception):
    """The object cannot be served in the syntax asked for (the message says why)."""


def cannot_transcode(attributes: dict, stored: str, target: str, size: int = 0) -> str | None:
    """Why an instance (its index attributes) cannot become `target`, or None if it can.

    Read before streaming starts, so a request that cannot be met is a 406 with this
    reason rather than a broken stream."""
    if target == stored:
        return None
    if target not in TARGETS:
        return f"transcoding into {target} is not offered"
    if size > MAX_TRANSCODED_BYTES:
        return (f"the object is {size // 2**20} MiB; objects over {MAX_TRANSCODED_BYTES // 2**20} MiB are "
                "served only as stored (transcoding holds the whole object in memory)")
    if stored not in UNCOMPRESSED and stored not in ENCAPSULATED:
        return f"objects stored as {stored} are served only as stored"
    if "7FE00010" not in attributes and "00280010" not in attributes:
        return None  # no pixel data: only the encoding of the data set changes
    bits = first_int(attributes, "00280100")
    if target in ENCAPSULATED and bits not in (8, 16):
        return f"{bits}-bit pixel data cannot be compressed"
    if target == JPEG_BASELINE and bits != 8:
        return "JPEG baseline holds 8-bit samples only; this image has " f"{bits}-bit samples"
    return None


def first_int(attributes: dict, tag: str) -> int | None:
    values = (attributes.get(tag) or {}).get("Value") or [None]
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return None


def transcode(data: bytes, target: str, scratch: str | None = None) -> bytes:
    """A whole Part 10 object re-encoded in `target`; lossless targets keep every pixel."""
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == target:
        return data
    try:
        if stored == EXPLICIT_BE:
            # pydicom does not swap byte order when it writes; GDCM does (values, pixel words).
            data = encode_with_gdcm(data, EXPLICIT_LE, ds, scratch)
            if target == EXPLICIT_LE:
                return data
            ds = pydicom.dcmread(io.BytesIO(data))
        if target in UNCOMPRESSED:
            return write_uncompressed(ds, target)
        return encode_with_gdcm(data, target, ds, scratch)
    except CannotTranscode:
        raise
    except Exception as exc:  # codec errors carry no common type
        raise CannotTranscode(f"{stored} -> {target}: {exc}") from exc


def write_uncompressed(ds: Dataset, target: str) -> bytes:
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        # Same pixels, same instance: pydicom would otherwise give it a new SOP Instance UID.
        ds.decompress(generate_instance_uid=False)  # GDCM through pydicom; YBR colour becomes RGB
    ds.file_meta.TransferSyntaxUID = target
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=target == IMPLICIT_LE, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def encode_with_gdcm(data: bytes, target: str, ds: Dataset, scratch: str | None = None) -> bytes:
    """GDCM's ImageChangeTransferSyntax works on files: the object goes through two
    temporary files in `scratch` (fhirimg's own directory: they hold patient data),
    removed at once, bounded by one instance."""
    import gdcm
    if target == JPEG_BASELINE and int(ds.get("BitsAllocated", 0)) != 8:
        raise CannotTranscode("JPEG baseline holds 8-bit samples only")
    with temporary_path(scratch) as source, temporary_path(scratch) as result:
        with open(source, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        if not reader.Read():
            raise CannotTranscode("GDCM could not read the object")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(target)))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise CannotTranscode(f"GDCM could not encode the pixel data as {target}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(result)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise CannotTranscode("GDCM could not write the transcoded object")
        with open(result, "rb") as fh:
            encoded = fh.read()
    return mark_lossy(encoded, target) if target in LOSSY else encoded


def mark_lossy(data: bytes, target: str) -> bytes:
    """A lossy copy says so (PS3.3 C.7.6.1.1.5): Lossy Image Compression 01 and its method."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.LossyImageCompression = "01"
    methods = list(ds.get("LossyImageCompressionMethod", []) or [])
    ds.LossyImageCompressionMethod = methods + ["ISO_10918_1" if target == JPEG_BASELINE else "ISO_15444_1"]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class temporary_path:
    """A private (0600) temporary file name in `directory`, removed on exit whatever happened."""

    def __init__(self, directory: str | None = None):
        self.directory = directory

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="codec-", suffix=".dcm", dir=self.directory)
        os.close(fd)
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


@dataclass
class Frame:
    data: bytes
    media_type: str
    transfer_syntax: str


def frame_count(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


class PixelSource:
    """An object's pixel data read frame by frame from its open file (or S3 object): the
    header is parsed with the value deferred, a stored frame is its fragments read from
    where they lie, a decoded frame is decoded alone. Memory is bounded by one frame, so a
    600 MB cine loop is served to a viewer frame by frame like a 500 KB CT."""

    def __init__(self, fh: BinaryIO, sop_uid: str):
        self.fh, self.sop_uid = fh, sop_uid
        self.ds = pydicom.dcmread(fh, defer_size=1024)
        self.syntax = str(self.ds.file_meta.TransferSyntaxUID)
        if "PixelData" not in self.ds:
            raise NoPixelData(f"instance {sop_uid} has no pixel data")
        self.offset = self.ds.get_item("PixelData", keep_deferred=True).value_tell
        self.frames = frame_count(self.ds)

    def stored(self, number: int) -> bytes:
        """Frame `number` (1-based) of encapsulated pixel data, as stored (PS3.5 A.4)."""
        self.fh.seek(self.offset)
        offsets = None
        if "ExtendedOffsetTable" in self.ds and "ExtendedOffsetTableLengths" in self.ds:
            offsets = (self.ds.ExtendedOffsetTable, self.ds.ExtendedOffsetTableLengths)
        return get_frame(self.fh, number - 1, number_of_frames=self.frames, extended_offsets=offsets)

    def decoded(self, number: int) -> np.ndarray:
        """Frame `number` decoded (YBR colour converted to RGB)."""
        from pydicom.pixels import pixel_array
        self.fh.seek(0)
        return pixel_array(self.fh, index=number - 1)

    def frame(self, number: int, target: str, scratch: str | None = None) -> Frame:
        """Frame `number` in syntax `target`: the stored fragments when it is the stored
        encapsulated syntax, else decoded (and re-encoded for a compressed target)."""
        if target == self.syntax and self.syntax in ENCAPSULATED:
            return Frame(self.stored(number), MEDIA_OF[self.syntax], self.syntax)
        array = self.decoded(number)
        if target in UNCOMPRESSED:
            return Frame(native_bytes(array), "application/octet-stream", EXPLICIT_LE)
        encoded = pydicom.dcmread(io.BytesIO(transcode(single_frame_object(self.ds, array), target, scratch)))
        return Frame(get_frame(encoded.PixelData, 0, number_of_frames=1), MEDIA_OF[target], target)


class NoPixelData(Exception):
    pass


def native_bytes(array: np.ndarray) -> bytes:
    """An array as Explicit VR Little Endian pixel data (PS3.5 8.1.1)."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def single_frame_object(ds, array: np.ndarray) -> bytes:
    """A one-frame uncompressed copy of `ds`'s image (what a frame is re-encoded from)."""
    one = Dataset()
    one.file_meta = pydicom.dataset.FileMetaDataset()
    one.file_meta.TransferSyntaxUID = EXPLICIT_LE
    one.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    one.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "SamplesPerPixel",
                    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(one, keyword, ds.get(keyword))
    color = int(ds.get("SamplesPerPixel", 1)) > 1
    one.PhotometricInterpretation = "RGB" if color else ds.PhotometricInterpretation
    if color:
        one.PlanarConfiguration = 0
    one.PixelData = native_bytes(array)
    out = io.BytesIO()
    one.save_as(out, enforce_file_format=True)
    return out.getvalue()
