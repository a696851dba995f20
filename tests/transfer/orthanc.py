"""A private Orthanc with its DICOMweb plugin, started for the tests on a free loopback port."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import requests

from ..services import free_port, require_or_skip

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancServer:
    """Orthanc 1.10 binds every interface; RemoteAccessAllowed=false refuses non-local clients."""

    def __init__(self, workdir: Path):
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.exists():
            require_or_skip("Orthanc with its DICOMweb plugin is not installed "
                            "(apt-get install orthanc orthanc-dicomweb)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = self.url + "/dicom-web"
        config = self.write_config(workdir)
        self.log = open(workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen([binary, str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        self.session = requests.Session()
        self.session.trust_env = False
        self.wait_until_ready()

    def write_config(self, workdir: Path) -> Path:
        config = {
            "Name": "fhirimg-test", "HttpPort": self.port,
            "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
            "Plugins": [str(PLUGIN)], "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": False, "HttpCompressionEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.port}"},
        }
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        return path

    def wait_until_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log.name}")
            try:
                if self.session.get(self.url + "/system", timeout=0.5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError("Orthanc did not start")

    def upload(self, part10: bytes) -> None:
        response = self.session.post(self.url + "/instances", data=part10,
                                     headers={"Content-Type": "application/dicom"}, timeout=30)
        response.raise_for_status()

    def upload_study(self, study) -> None:
        for data in study.instances.values():
            self.upload(data)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
