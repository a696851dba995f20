"""A private Orthanc with its DICOM server on a free loopback port: the PACS of the DIMSE
tests (C-FIND/C-GET/C-MOVE source) and a C-STORE sender (``/modalities/{name}/store``)."""
from __future__ import annotations

from pathlib import Path

from ..services import free_port
from ..transfer.orthanc import OrthancServer

ORTHANC_AET = "ORTHANC"


class OrthancDicomServer(OrthancServer):
    """``modalities``: name -> (AE title, host, port) of the nodes Orthanc may talk to (C-STORE
    to them, C-MOVE to them, and accept their associations)."""

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 ae_title: str = ORTHANC_AET, extra: dict | None = None):
        self.dicom_port = free_port()
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.extra = dict(extra or {})
        super().__init__(workdir)

    def write_config(self, workdir: Path) -> Path:
        path = super().write_config(workdir)
        import json
        config = json.loads(path.read_text())
        config.update({
            "DicomServerEnabled": True, "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomCheckModalityHost": False, "UnknownSopClassAccepted": True,
            "DicomModalities": {name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()},
            **self.extra,
        })
        path.write_text(json.dumps(config))
        return path

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare a node at run time (PUT /modalities/{name}), e.g. fhirimg's listener."""
        self.session.put(f"{self.url}/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port},
                         timeout=10).raise_for_status()

    def store_to(self, modality: str, resources: list[str], timeout: float = 120) -> dict:
        """C-STORE Orthanc resources (its own ids) to a declared modality; the job's answer."""
        response = self.session.post(f"{self.url}/modalities/{modality}/store",
                                     json={"Resources": resources, "Synchronous": True}, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def stored_instance_ids(self) -> list[str]:
        return self.session.get(self.url + "/instances", timeout=10).json()
