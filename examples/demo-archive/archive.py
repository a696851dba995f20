"""A private DICOMweb archive holding one small study, for the README's transfer walkthrough.

    python examples/demo-archive/archive.py start   # start it (or find it running), write the Bundle
    python examples/demo-archive/archive.py stop    # stop it

`start` runs Orthanc with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) on
a free loopback port - never 8042, where Debian's own Orthanc service listens - with its
storage, configuration and log under var/demo-archive/, uploads a synthetic CT study written
with pydicom (2 series x 3 instances, 64x64, the same UIDs every time), and writes
var/demo-archive/bundle.json: a transaction Bundle with Patient/demo-patient,
Endpoint/demo-archive (the archive's DICOMweb base) and ImagingStudy/demo-study, ready for
`fhirimg load`. Orthanc keeps running after the script exits, like a service, until `stop`.
It is addressed on 127.0.0.1, which fhirimg's default [transfer] settings allow
(allow_loopback); Orthanc 1.10 listens on every interface but, with RemoteAccessAllowed
false, answers only clients on this machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SYSTEM_ORTHANC_PORT = 8042  # Debian's orthanc service: never take its port
STUDY_UID = "1.2.826.0.1.3680043.8.498.16.1"  # under pydicom's UID root, fixed for the README
SERIES, INSTANCES, ROWS = 2, 3, 64
PATIENT_ID, MRN_SYSTEM = "DEMO-0001", "http://hospital.example.org/mrn"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


# -- the archive ---------------------------------------------------------------------------

def orthanc_binary() -> str:
    """Orthanc is installed in /usr/sbin, which is not on a normal user's PATH."""
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    if found is None or not PLUGIN.exists():
        sys.exit("Orthanc with its DICOMweb plugin is not installed: sudo apt-get install orthanc orthanc-dicomweb")
    return found


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != SYSTEM_ORTHANC_PORT:
            return port


def session() -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # a proxy from the environment must not see loopback requests
    return http


def is_answering(url: str) -> bool:
    try:
        return session().get(f"{url}/system", timeout=1).ok
    except requests.RequestException:
        return False


def running_url(workdir: Path) -> str | None:
    """The URL of the archive a previous `start` left running, if it still answers."""
    state = workdir / "orthanc.state.json"
    if not state.exists():
        return None
    url = json.loads(state.read_text())["url"]
    return url if is_answering(url) else None


def start_orthanc(workdir: Path) -> str:
    """Orthanc in its own session (Ctrl-C in this terminal does not stop it), loopback only."""
    workdir = workdir.resolve()
    port = free_port()
    config = {"Name": "fhirimg-demo-archive", "HttpPort": port, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "DicomServerEnabled": False,
              "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
              "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"}}
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    with open(workdir / "orthanc.log", "ab") as log:
        process = subprocess.Popen([orthanc_binary(), str(workdir / "orthanc.json")], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not is_answering(url):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"Orthanc did not start; see {workdir / 'orthanc.log'}")
        time.sleep(0.1)
    (workdir / "orthanc.state.json").write_text(json.dumps({"url": url, "pid": process.pid}))
    return url


def stop(workdir: Path) -> None:
    state = workdir / "orthanc.state.json"
    if not state.exists():
        print("no demo archive is running")
        return
    saved = json.loads(state.read_text())
    if is_our_orthanc(saved["pid"], workdir):
        os.kill(saved["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while is_our_orthanc(saved["pid"], workdir) and time.monotonic() < deadline:
            time.sleep(0.1)
    state.unlink()
    print(f"stopped the demo archive at {saved['url']}")


def is_our_orthanc(pid: int, workdir: Path) -> bool:
    """Whether `pid` is still the Orthanc started with this directory's configuration (not a
    number the system has given to another process since, nor a zombie)."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and str(workdir.resolve() / "orthanc.json").encode() in cmdline


# -- the study -----------------------------------------------------------------------------

def series_uid(series: int) -> str:
    return f"{STUDY_UID}.{series}"


def sop_uid(series: int, number: int) -> str:
    return f"{STUDY_UID}.{series}.{number}"


def ct_instance(series: int, number: int) -> bytes:
    """One CT image as a DICOM Part-10 file: a 12-bit gradient, different in each slice."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid(series, number)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, series_uid(series)
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = PATIENT_ID, "Demo^Dana", "19800101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260105", "093000", "DEMO-ACC-1", "1"
    ds.StudyDescription, ds.SeriesDescription = "CT CHEST (demo)", f"demo series {series}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = ROWS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = array("H", ((x * y + 97 * number) % 4096 for y in range(ROWS) for x in range(ROWS))).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def upload_study(url: str) -> None:
    """POST /instances; Orthanc keeps one copy of an instance it already holds."""
    http = session()
    for series in range(1, SERIES + 1):
        for number in range(1, INSTANCES + 1):
            response = http.post(f"{url}/instances", data=ct_instance(series, number),
                                 headers={"Content-Type": "application/dicom"}, timeout=30)
            response.raise_for_status()


# -- the FHIR side -------------------------------------------------------------------------

def transaction_bundle(dicomweb: str) -> dict:
    """What an EHR would push about the study: its patient, its archive and the study."""
    ct = {"coding": [{"system": DCM, "code": "CT"}]}
    sop_class = {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE_STORAGE}"}
    patient = {"resourceType": "Patient", "id": "demo-patient",
               "identifier": [{"system": MRN_SYSTEM, "value": PATIENT_ID}],
               "name": [{"family": "Demo", "given": ["Dana"]}], "gender": "female", "birthDate": "1980-01-01"}
    endpoint = {"resourceType": "Endpoint", "id": "demo-archive", "status": "active", "name": "Demo archive (Orthanc)",
                "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                                "code": code}]} for code in ("dicom-wado-rs", "dicom-qido-rs")],
                "payload": [{"mimeType": ["application/dicom"]}], "address": dicomweb}
    study = {"resourceType": "ImagingStudy", "id": "demo-study", "status": "available",
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
             "subject": {"reference": "Patient/demo-patient"}, "endpoint": [{"reference": "Endpoint/demo-archive"}],
             "modality": [ct], "description": "CT CHEST (demo)", "started": "2026-01-05T09:30:00Z",
             "numberOfSeries": SERIES, "numberOfInstances": SERIES * INSTANCES,
             "series": [{"uid": series_uid(s), "number": s, "modality": ct, "numberOfInstances": INSTANCES,
                         "instance": [{"uid": sop_uid(s, n), "number": n, "sopClass": sop_class}
                                      for n in range(1, INSTANCES + 1)]}
                        for s in range(1, SERIES + 1)]}
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                      for r in (patient, endpoint, study)]}


def start(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    url = running_url(workdir) or start_orthanc(workdir)
    upload_study(url)
    bundle = workdir / "bundle.json"
    bundle.write_text(json.dumps(transaction_bundle(f"{url}/dicom-web"), indent=2) + "\n")
    print(f"demo archive: Orthanc at {url}/dicom-web holds study {STUDY_UID} ({SERIES} series, "
          f"{SERIES * INSTANCES} instances); its files and log are in {workdir}/")
    print(f"wrote {bundle}: Patient/demo-patient, Endpoint/demo-archive, ImagingStudy/demo-study")
    print(f"next: fhirimg load {bundle}   (stop the archive: python {sys.argv[0]} stop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", default="var/demo-archive", type=Path,
                        help="where Orthanc's files, its log and bundle.json go (default: %(default)s)")
    args = parser.parse_args()
    if args.action == "start":
        start(args.dir)
    else:
        stop(args.dir)


if __name__ == "__main__":
    main()
