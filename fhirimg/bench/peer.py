"""The peer archive of ``fhirimg bench retrieve``: a second Orthanc pulling the study over DICOMweb.

What a site would run instead of fhirimg: Orthanc's DICOMweb plugin retrieving a study from a
remote DICOMweb server into its own storage (``POST /dicom-web/servers/{name}/retrieve``), with
``SyncStorageArea: true`` so that, like fhirimg, it makes every file durable before it counts.
Its time to first instance is read by polling its instance count while the retrieve runs.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from .retrieve_source import PrivateOrthanc

SERVER_NAME = "source"


class OrthancPeer:
    def __init__(self, source_dicomweb: str) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-peer-"))
        self.orthanc = PrivateOrthanc(workdir, sync=True, extra={
            "DicomWeb": {"Servers": {SERVER_NAME: [source_dicomweb.rstrip("/") + "/"]}}})
        self.session = self.orthanc.session

    def count(self) -> int:
        return int(self.session.get(self.orthanc.url + "/statistics", timeout=10).json()["CountInstances"])

    def retrieve(self, study_uid: str, nbytes: int):
        """One retrieve of the whole study (``nbytes`` of instances) into an empty peer."""
        from .retrieve import RunFigures
        self.empty()
        first: list[float] = []
        done = threading.Event()
        started = time.perf_counter()

        def watch() -> None:
            while not done.is_set() and not first:
                if self.count() > 0:
                    first.append(time.perf_counter() - started)
                    return
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            answer = self.session.post(f"{self.orthanc.url}/dicom-web/servers/{SERVER_NAME}/retrieve", timeout=3600,
                                       json={"Resources": [{"Study": study_uid}], "Synchronous": True})
            answer.raise_for_status()
        finally:
            done.set()
            watcher.join()
        seconds = time.perf_counter() - started
        return RunFigures(seconds, nbytes, self.count(), first_instance=first[0] if first else None)

    def empty(self) -> None:
        for orthanc_id in self.session.get(self.orthanc.url + "/studies", timeout=60).json():
            self.session.delete(f"{self.orthanc.url}/studies/{orthanc_id}", timeout=600).raise_for_status()

    def stop(self) -> None:
        self.orthanc.stop()
