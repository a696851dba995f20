"""A private Orthanc loaded with a synthetic study, for ``fhirimg bench retrieve`` without --source.

Orthanc (Debian packages orthanc, orthanc-dicomweb) is started on a free loopback port with
its own temporary storage and ``RemoteAccessAllowed: false``; the study is written with
pydicom (CT, 16-bit pixels) and uploaded with ``POST /instances``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HIGH_NIBBLE_ZERO = bytes(b & 0x0F for b in range(256))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateOrthanc:
    """``dicom``: its DICOM server on a loopback port too (``dicom_port``, AE ORTHANC);
    ``sync``: fsync every file it stores (SyncStorageArea), for comparisons with fhirimg's
    durable writes; ``env``: extra environment (bench push gives TCP_NODELAY=1); ``wan``: run
    inside that EmulatedWan's far namespace, reached at its remote address through the link
    (remote access allowed: that namespace has no other way in); ``extra``: more configuration
    (the peer archive's DicomWeb.Servers)."""

    def __init__(self, workdir: Path, dicom: bool = False, sync: bool | None = None, env: dict | None = None,
                 wan=None, extra: dict | None = None):
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.exists():
            raise RuntimeError("Orthanc with its DICOMweb plugin is not installed "
                               "(apt-get install orthanc orthanc-dicomweb), or pass --source and --study")
        self.port = free_port()
        host = wan.remote if wan is not None else "127.0.0.1"
        self.url = f"http://{host}:{self.port}"
        self.dicomweb = self.url + "/dicom-web"
        self.dicom_port = free_port() if dicom else None
        config = {"Name": "fhirimg-bench", "HttpPort": self.port, "StorageDirectory": str(workdir / "storage"),
                  "IndexDirectory": str(workdir / "index"), "Plugins": [str(PLUGIN)],
                  "RemoteAccessAllowed": wan is not None, "AuthenticationEnabled": False,
                  "DicomServerEnabled": False, "HttpCompressionEnabled": False, "StorageCompression": False,
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"{host}:{self.port}"}}
        if dicom:
            config.update({"DicomServerEnabled": True, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
                           "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                           "UnknownSopClassAccepted": True})
        if sync is not None:
            config["SyncStorageArea"] = sync
        for key, value in (extra or {}).items():
            config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
        (workdir / "orthanc.json").write_text(json.dumps(config))
        self.log = open(workdir / "orthanc.log", "wb")
        argv = [binary, str(workdir / "orthanc.json")]
        self.process = subprocess.Popen(wan.command(argv) if wan is not None else argv, stdout=self.log,
                                        stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.session = requests.Session()
        self.session.trust_env = False
        self.wait_until_ready()

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}")
            try:
                if self.session.get(self.url + "/system", timeout=0.5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError("Orthanc did not start")

    def upload(self, data: bytes) -> None:
        response = self.session.post(self.url + "/instances", data=data,
                                     headers={"Content-Type": "application/dicom"}, timeout=60)
        response.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def synthetic_instance(study_uid: str, series_uid: str, series_number: int, number: int, rows: int) -> bytes:
    """One CT instance, Part-10, Explicit VR Little Endian, random 12-bit pixels in 16 bits."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "BENCH-1", "Bench^Patient"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261123", "120000", "BENCH"
    ds.SeriesNumber, ds.InstanceNumber = series_number, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    raw = bytearray(os.urandom(rows * rows * 2))
    raw[1::2] = bytes(raw[1::2]).translate(HIGH_NIBBLE_ZERO)  # keep values within 12 bits
    ds.PixelData = bytes(raw)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def load_synthetic_study(orthanc: PrivateOrthanc, series: int, instances: int, rows: int) -> tuple[str, int]:
    """Upload series × instances synthetic instances; returns (StudyInstanceUID, bytes)."""
    study_uid = generate_uid()
    jobs = [(s, n) for s in range(1, series + 1) for n in range(1, instances + 1)]
    series_uids = {s: generate_uid() for s in range(1, series + 1)}

    def one(job) -> int:
        data = synthetic_instance(study_uid, series_uids[job[0]], job[0], job[1], rows)
        orthanc.upload(data)
        return len(data)

    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(one, jobs))
    return study_uid, total
