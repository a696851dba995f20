"""Issue 21: compressed studies served the way viewers and PACS ask for them.

Stored objects are compressed by DCMTK (dcmcrle, dcmcjpls, dcmcjpeg), and what fhirimg
sends back is decompressed by DCMTK again (dcmdrle, dcmdjpls, dcmdjpeg) or, for JPEG 2000,
by Pillow's OpenJPEG: the pixels are compared with the originals by independent codecs,
never by GDCM, which fhirimg encodes with.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from fhirimg.dicomweb import codecs
from fhirimg.transfer.dicomcheck import Expectation, inspect_part10

from ..services import require_or_skip
from ..transfer.dicomfactory import make_study, to_part10
from ..transfer.site import make_site

DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.fixture(scope="module", autouse=True)
def dcmtk():
    if shutil.which("dcmcjpls") is None:
        require_or_skip("DCMTK (Debian package dcmtk) is not installed")


def dcmtk_tool(tool: str, data: bytes, tmp: Path, *options: str) -> bytes:
    source, result = tmp / f"{tool}-in.dcm", tmp / f"{tool}-out.dcm"
    source.write_bytes(data)
    subprocess.run([tool, *options, str(source), str(result)], check=True, capture_output=True)
    return result.read_bytes()


COMPRESSORS = {codecs.RLE: ("dcmcrle",), codecs.JPEG_LS: ("dcmcjpls",),
               codecs.JPEG_LOSSLESS_SV1: ("dcmcjpeg", "+e1")}
DECOMPRESSORS = {codecs.RLE: "dcmdrle", codecs.JPEG_LS: "dcmdjpls", codecs.JPEG_LOSSLESS_SV1: "dcmdjpeg",
                 codecs.JPEG_BASELINE: "dcmdjpeg"}


def pixels_independently(data: bytes, tmp: Path) -> np.ndarray:
    """The pixel array of a Part 10 object, decoded by DCMTK or Pillow (never GDCM)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax in DECOMPRESSORS:
        ds = pydicom.dcmread(io.BytesIO(dcmtk_tool(DECOMPRESSORS[syntax], data, tmp)))
    elif syntax == codecs.J2K_LOSSLESS:
        from PIL import Image
        frames = [np.asarray(Image.open(io.BytesIO(f))) for f in generate_frames(ds.PixelData)]
        return frames[0] if len(frames) == 1 else np.stack(frames)
    return ds.pixel_array  # native or deflated: pydicom without any codec


def pixels_of(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def multipart(response) -> list[tuple[dict, bytes]]:
    """(headers, body) of each part of a multipart/related answer."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1).encode()
    out = []
    for segment in (b"\r\n" + response.data).split(b"\r\n--" + boundary)[1:]:
        if segment.startswith(b"--"):
            break
        head, body = segment.split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        out.append((headers, body))
    return out


class Stored:
    """One study of single-frame CTs (16-bit), an 8-bit one and a 3-frame one, each
    instance stored in the syntax the test names."""

    def __init__(self, site, tmp: Path):
        self.site, self.tmp = site, tmp
        self.originals: dict[str, bytes] = {}

    def put(self, data: bytes, syntax: str | None = None) -> tuple[str, str, str]:
        ds = pydicom.dcmread(io.BytesIO(data))
        self.originals[ds.SOPInstanceUID] = data
        if syntax is not None:
            data = dcmtk_tool(*COMPRESSORS[syntax][:1], data, self.tmp, *COMPRESSORS[syntax][1:])
            assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
        blobstore = self.site.context().blobstore
        staged = blobstore.open_staging()
        staged.write(data)
        staged.finish()
        expectation = Expectation(ds.StudyInstanceUID, ds.SeriesInstanceUID, frozenset([ds.SOPInstanceUID]))
        blobstore.commit(staged, inspect_part10(staged.path, expectation))
        self.stored = getattr(self, "stored", {})
        self.stored[ds.SOPInstanceUID] = data
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    def url(self, uids: tuple[str, str, str], tail: str = "") -> str:
        return f"/dicom-web/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}{tail}"


@pytest.fixture
def store(tmp_path):
    return Stored(make_site(tmp_path), tmp_path)


def one_instance(seed: int, **options) -> bytes:
    study = make_study(series=1, instances=1, rows=48, columns=40, seed=seed, **options)
    return next(iter(study.instances.values()))


def eight_bit(seed: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(one_instance(seed)))
    yy, xx = np.mgrid[0:ds.Rows, 0:ds.Columns]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = ((xx * 5 + yy * 3) % 256).astype(np.uint8).tobytes()  # smooth: JPEG keeps it close
    return to_part10(ds)


def multi_frame(seed: int, frames: int = 3) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(one_instance(seed)))
    rng = np.random.default_rng(seed)
    ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 4096, size=(frames, ds.Rows, ds.Columns), dtype=np.uint16).tobytes()
    return to_part10(ds)


@pytest.mark.parametrize("stored_as", [codecs.RLE, codecs.JPEG_LS, codecs.JPEG_LOSSLESS_SV1])
def test_a_retrieve_naming_no_transfer_syntax_gets_explicit_vr_little_endian(store, stored_as):
    """PS3.18 8.7.3: the default transfer syntax of application/dicom; fhirimg sent the
    stored RLE file."""
    uids = store.put(one_instance(60), stored_as)
    response = store.site.client.get(store.url(uids), headers={"Accept": DICOM})
    assert response.status_code == 200
    [(headers, body)] = multipart(response)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={codecs.EXPLICIT_LE}"
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == codecs.EXPLICIT_LE
    assert np.array_equal(pixels_of(body), pixels_of(store.originals[uids[2]]))


def test_transfer_syntax_star_sends_the_stored_bytes(store):
    uids = store.put(one_instance(61), codecs.JPEG_LS)
    response = store.site.client.get(store.url(uids), headers={"Accept": DICOM + "; transfer-syntax=*"})
    [(headers, body)] = multipart(response)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={codecs.JPEG_LS}"
    assert body == store.stored[uids[2]]


@pytest.mark.parametrize("target", [codecs.IMPLICIT_LE, codecs.DEFLATED_LE, codecs.RLE, codecs.JPEG_LS,
                                    codecs.JPEG_LOSSLESS_SV1, codecs.J2K_LOSSLESS])
@pytest.mark.parametrize("stored_as", [None, codecs.RLE])
def test_lossless_transcoding_keeps_every_pixel(store, target, stored_as):
    uids = store.put(one_instance(62), stored_as)
    response = store.site.client.get(store.url(uids), headers={"Accept": f"{DICOM}; transfer-syntax={target}"})
    assert response.status_code == 200, response.data[:300]
    [(headers, body)] = multipart(response)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={target}"
    assert int(headers["Content-Length"]) == len(body)
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == target and ds.SOPInstanceUID == uids[2]
    assert "LossyImageCompression" not in ds
    assert np.array_equal(pixels_independently(body, store.tmp), pixels_of(store.originals[uids[2]]))


def test_jpeg_baseline_is_offered_for_8_bit_images_and_says_it_is_lossy(store):
    uids = store.put(eight_bit(63))
    response = store.site.client.get(store.url(uids), headers={
        "Accept": f"{DICOM}; transfer-syntax={codecs.JPEG_BASELINE}"})
    [(headers, body)] = multipart(response)
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == codecs.JPEG_BASELINE and ds.LossyImageCompression == "01"
    difference = pixels_independently(body, store.tmp).astype(int) - pixels_of(store.originals[uids[2]])
    assert np.abs(difference).mean() < 2.0


def test_a_syntax_that_cannot_be_produced_is_406_naming_why_and_a_later_choice_is_taken(store):
    uids = store.put(one_instance(64), codecs.RLE)  # 16-bit
    refused = store.site.client.get(store.url(uids), headers={
        "Accept": f"{DICOM}; transfer-syntax={codecs.JPEG_BASELINE}"})
    assert refused.status_code == 406
    assert refused.json["resourceType"] == "OperationOutcome" and "8-bit" in refused.json["issue"][0]["diagnostics"]
    unknown = store.site.client.get(store.url(uids), headers={
        "Accept": f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.100"})
    assert unknown.status_code == 406 and "1.2.840.10008.1.2.4.100" in unknown.json["issue"][0]["diagnostics"]
    fallback = store.site.client.get(store.url(uids), headers={
        "Accept": f"{DICOM}; transfer-syntax={codecs.JPEG_BASELINE}, {DICOM}; transfer-syntax=*; q=0.5"})
    [(headers, body)] = multipart(fallback)
    assert body == store.stored[uids[2]]


def test_a_study_of_mixed_syntaxes_comes_in_one_syntax_when_asked(store):
    originals = [one_instance(65), one_instance(66)]
    first = store.put(originals[0], codecs.RLE)
    ds = pydicom.dcmread(io.BytesIO(originals[1]))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first[0], first[1]
    store.put(to_part10(ds), codecs.JPEG_LS)
    response = store.site.client.get(f"/dicom-web/studies/{first[0]}", headers={
        "Accept": f"{DICOM}; transfer-syntax={codecs.J2K_LOSSLESS}"})
    parts = multipart(response)
    assert len(parts) == 2 and all(codecs.J2K_LOSSLESS in h["Content-Type"] for h, _ in parts)
    for _, body in parts:
        sop = pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID
        assert np.array_equal(pixels_independently(body, store.tmp), pixels_of(store.originals[sop]))


# -- frames -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stored_as, media", [(codecs.RLE, "image/dicom-rle"), (codecs.JPEG_LS, "image/jls"),
                                              (codecs.JPEG_LOSSLESS_SV1, "image/jpeg")])
def test_frames_of_compressed_data_with_star_are_the_stored_fragments_with_their_media_type(store, stored_as, media):
    """OHIF asks `type=application/octet-stream; transfer-syntax=*`; fhirimg answered 406
    for every Accept, and the viewport stayed black."""
    uids = store.put(multi_frame(67), stored_as)
    response = store.site.client.get(store.url(uids, "/frames/2,3"), headers={
        "Accept": f"{OCTETS}; transfer-syntax=*"})
    assert response.status_code == 200, response.data[:300]
    assert f'type="{media}"' in response.headers["Content-Type"]
    parts = multipart(response)
    expected = list(generate_frames(pydicom.dcmread(io.BytesIO(store.stored[uids[2]])).PixelData,
                                    number_of_frames=3))[1:]
    assert [body for _, body in parts] == expected
    assert all(h["Content-Type"] == f"{media}; transfer-syntax={stored_as}" for h, _ in parts)


@pytest.mark.parametrize("stored_as", [codecs.RLE, codecs.JPEG_LS, codecs.JPEG_LOSSLESS_SV1])
def test_frames_of_compressed_data_asked_uncompressed_are_decoded(store, stored_as):
    uids = store.put(multi_frame(68), stored_as)
    for accept in ("", OCTETS, f"{OCTETS}; transfer-syntax={codecs.EXPLICIT_LE}"):
        response = store.site.client.get(store.url(uids, "/frames/1,3"), headers={"Accept": accept} if accept else {})
        assert response.status_code == 200, (accept, response.data[:300])
        parts = multipart(response)
        original = pixels_of(store.originals[uids[2]])
        assert [body for _, body in parts] == [original[0].tobytes(), original[2].tobytes()]
        assert all(h["Content-Type"] == f"application/octet-stream; transfer-syntax={codecs.EXPLICIT_LE}"
                   for h, _ in parts)


def test_a_frame_can_be_asked_for_in_another_compressed_media_type(store, tmp_path):
    uids = store.put(multi_frame(69), codecs.RLE)
    response = store.site.client.get(store.url(uids, "/frames/2"), headers={
        "Accept": 'multipart/related; type="image/jls"'})
    [(headers, body)] = multipart(response)
    assert headers["Content-Type"] == f"image/jls; transfer-syntax={codecs.JPEG_LS}"
    # Decode the JPEG-LS codestream with DCMTK: wrap it as a one-frame object.
    ds = pydicom.dcmread(io.BytesIO(store.originals[uids[2]]))
    del ds.NumberOfFrames
    ds.PixelData = encapsulate([body])
    ds["PixelData"].VR = "OB"
    wrapped = to_part10(ds, codecs.JPEG_LS)
    assert np.array_equal(pixels_independently(wrapped, tmp_path), pixels_of(store.originals[uids[2]])[1])


def test_one_frame_asked_as_a_single_media_type_is_the_whole_body(store):
    uids = store.put(one_instance(70), codecs.JPEG_LS)
    response = store.site.client.get(store.url(uids, "/frames/1"), headers={"Accept": "image/jls"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("image/jls")
    stored = pydicom.dcmread(io.BytesIO(store.stored[uids[2]]))
    assert response.data == next(generate_frames(stored.PixelData, number_of_frames=1))


def test_frames_that_cannot_be_given_as_asked_are_406_and_missing_frames_404(store):
    uids = store.put(multi_frame(71), codecs.RLE)  # 16-bit: no JPEG baseline
    refused = store.site.client.get(store.url(uids, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert refused.status_code == 406 and refused.json["resourceType"] == "OperationOutcome"
    missing = store.site.client.get(store.url(uids, "/frames/4"), headers={"Accept": f"{OCTETS}; transfer-syntax=*"})
    assert missing.status_code == 404 and "3 frame(s)" in missing.json["issue"][0]["diagnostics"]


def test_an_object_too_large_to_transcode_is_406_and_served_as_stored_with_star(store, monkeypatch):
    monkeypatch.setattr(codecs, "MAX_TRANSCODED_BYTES", 1000)
    uids = store.put(one_instance(72), codecs.RLE)
    refused = store.site.client.get(store.url(uids), headers={"Accept": DICOM})
    assert refused.status_code == 406 and "served only as stored" in refused.json["issue"][0]["diagnostics"]
    [(headers, body)] = multipart(store.site.client.get(store.url(uids), headers={"Accept": DICOM + "; transfer-syntax=*"}))
    assert body == store.stored[uids[2]]
    # Frames are made one at a time, from any size of object.
    assert store.site.client.get(store.url(uids, "/frames/1")).status_code == 200


def test_transcoding_leaves_no_file_and_writes_none_outside_fhirimgs_directory(store, monkeypatch):
    import tempfile
    made = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        made.append(path)
        return fd, path
    monkeypatch.setattr(tempfile, "mkstemp", spy)
    uids = store.put(one_instance(73), codecs.RLE)
    response = store.site.client.get(store.url(uids), headers={"Accept": f"{DICOM}; transfer-syntax={codecs.JPEG_LS}"})
    assert response.status_code == 200 and made
    var_dir = Path(store.site.config["var_dir"]).resolve()
    assert all(Path(path).resolve().is_relative_to(var_dir) for path in made), made
    assert not any(Path(path).exists() for path in made)


def test_a_frame_of_a_large_compressed_object_is_read_without_reading_the_object(store, monkeypatch):
    """A viewer scrolling a long cine loop asks for one frame at a time: each is its own
    fragments, read where they lie (the whole object was read for every frame)."""
    uids = store.put(multi_frame(74, frames=40), codecs.RLE)
    size = len(store.stored[uids[2]])
    read = []

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
    from fhirimg.api import dicomweb
    with store.site.app.app_context():
        real_store = dicomweb.blobstore()
    real_open = real_store.open
    monkeypatch.setattr(real_store, "open", lambda path: Counting(real_open(path)))
    for accept in (f"{OCTETS}; transfer-syntax=*", OCTETS):
        read.clear()
        response = store.site.client.get(store.url(uids, "/frames/37"), headers={"Accept": accept})
        assert response.status_code == 200
        assert sum(read) < size / 4, (accept, sum(read), size)


def test_a_big_endian_object_is_served_in_little_endian(store):
    """DIMSE peers may send Explicit VR Big Endian; pydicom cannot write it as little endian
    (the retrieve broke off mid-part). Converted by DCMTK here, served by fhirimg."""
    original = one_instance(75)
    big = dcmtk_tool("dcmconv", original, store.tmp, "+tb")
    assert pydicom.dcmread(io.BytesIO(big)).file_meta.TransferSyntaxUID == codecs.EXPLICIT_BE
    ds = pydicom.dcmread(io.BytesIO(original))
    blobstore = store.site.context().blobstore
    staged = blobstore.open_staging()
    staged.write(big)
    staged.finish()
    blobstore.commit(staged, inspect_part10(staged.path, Expectation(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                                     frozenset([ds.SOPInstanceUID]))))
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    for target in (codecs.EXPLICIT_LE, codecs.IMPLICIT_LE, codecs.JPEG_LS):
        response = store.site.client.get(store.url(uids), headers={"Accept": f"{DICOM}; transfer-syntax={target}"})
        [(headers, body)] = multipart(response)
        assert headers["Content-Type"].endswith(target)
        assert np.array_equal(pixels_independently(body, store.tmp), ds.pixel_array), target
    frame = multipart(store.site.client.get(store.url(uids, "/frames/1"), headers={"Accept": OCTETS}))[0][1]
    assert frame == ds.pixel_array.astype("<u2").tobytes()


def test_several_frames_asked_as_one_media_type_are_406_not_glued_together(store):
    uids = store.put(multi_frame(76), codecs.RLE)
    for accept in ("application/octet-stream", "image/dicom-rle"):
        response = store.site.client.get(store.url(uids, "/frames/1,2"), headers={"Accept": accept})
        assert response.status_code == 406 and "multipart/related" in response.json["issue"][0]["diagnostics"]
    bulk = store.site.client.get(store.url(uids, "/bulkdata/7FE00010"), headers={"Accept": "image/dicom-rle"})
    assert bulk.status_code == 406
    whole = store.site.client.get(store.url(uids, "/bulkdata/7FE00010"), headers={"Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.data == pixels_of(store.originals[uids[2]]).tobytes()
