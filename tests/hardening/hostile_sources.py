"""Hostile DICOMweb sources for the worker's hardening tests (issue 15, items 8-10).

Each source answers QIDO and metadata for a real synthetic study at once, and misbehaves
where a test says: an endless part, endless junk parts, a dripping or stalling body.
``StagingMeter`` counts every byte the worker writes to its staging files.
"""
from __future__ import annotations

import io
import threading
import time
from typing import Callable

import orjson
import pydicom

from fhirimg.transfer.blobstore import StagedFile

JSON_HEADERS = {"Content-Type": "application/dicom+json"}
BOUNDARY = "b0undary"
MULTIPART_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def metadata_json(ds: pydicom.Dataset) -> dict:
    """The DICOM JSON a WADO-RS metadata answer gives for an instance, pixel geometry included."""
    return {"0020000D": {"vr": "UI", "Value": [ds.StudyInstanceUID]},
            "0020000E": {"vr": "UI", "Value": [ds.SeriesInstanceUID]},
            "00080018": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            "00080016": {"vr": "UI", "Value": [ds.SOPClassUID]},
            "00080060": {"vr": "CS", "Value": [ds.Modality]},
            "00200013": {"vr": "IS", "Value": [int(ds.InstanceNumber)]},
            "00280002": {"vr": "US", "Value": [int(ds.SamplesPerPixel)]},
            "00280010": {"vr": "US", "Value": [int(ds.Rows)]},
            "00280011": {"vr": "US", "Value": [int(ds.Columns)]},
            "00280100": {"vr": "US", "Value": [int(ds.BitsAllocated)]}}


def without_geometry(item: dict) -> dict:
    return {tag: value for tag, value in item.items() if not tag.startswith("0028")}


def study_answers(series, geometry: bool = True) -> Callable:
    """A route answering QIDO and metadata for one synthetic series; None for anything else."""
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in series.instances.values()]
    listed = [metadata_json(ds) if geometry else without_geometry(metadata_json(ds)) for ds in datasets]

    def answer(handler):
        path = handler.path.split("?")[0]
        if path.endswith("/series"):
            return 200, JSON_HEADERS, orjson.dumps([{"0020000E": {"vr": "UI", "Value": [series.series_uid]},
                                                      "00080060": {"vr": "CS", "Value": ["CT"]}}])
        if path.endswith("/instances") or path.endswith("/metadata"):
            return 200, JSON_HEADERS, orjson.dumps(listed)
        return None
    return answer


def start_body(handler, content_type: str = MULTIPART_TYPE) -> None:
    """Status and headers of a body that ends when the connection closes (no length)."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True


def send_until(handler, pieces, stop: threading.Event, seconds: float, pause: float = 0.0) -> None:
    """Write the pieces one after the other until the client leaves, ``stop`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    for piece in pieces:
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            handler.wfile.write(piece)
            handler.wfile.flush()
        except OSError:
            return
        if pause:
            time.sleep(pause)


def endless_part(chunk: int = 64 * 1024):
    """One part that never ends: a part header, then junk for ever."""
    yield PART_HEAD
    junk = b"\x5a" * chunk
    while True:
        yield junk


def endless_junk_parts(part_bytes: int):
    """Part after part of junk, each ``part_bytes`` long, no closing delimiter ever."""
    junk = b"\x5a" * part_bytes
    while True:
        yield PART_HEAD + junk + b"\r\n"


def hostile_source(study, body: Callable, stop: threading.Event, geometry: bool = True) -> Callable:
    """QIDO and metadata answered at once; every pixel request gets ``body(handler)``."""
    answer = study_answers(study.series[0], geometry)

    def route(handler):
        answered = answer(handler)
        if answered is not None:
            return answered
        body(handler)
        return None, {}, b""
    return route


class StagingMeter:
    """Counts the bytes written to staging files (patches StagedFile.write for one test)."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        self.lock = threading.Lock()
        original = StagedFile.write
        meter = self

        def counting_write(staged, data):
            with meter.lock:
                meter.bytes += len(data)
            return original(staged, data)
        monkeypatch.setattr(StagedFile, "write", counting_write)


def staging_files(site) -> list:
    return list(site.context().blobstore.staging.glob("part-*"))
