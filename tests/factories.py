"""Resource factories: realistic R5 content built in code, not pasted JSON."""
from __future__ import annotations

import itertools
import random

_counter = itertools.count(1)
DICOM_ROOT = "1.2.826.0.1.3680043.10.543"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def new_uid() -> str:
    return f"{DICOM_ROOT}.{next(_counter)}.{random.randint(1, 10**12)}"


def make_patient(mrn: str | None = None, family: str = "Doe", **extra) -> dict:
    patient = {"resourceType": "Patient",
               "identifier": [{"system": "http://hospital.example.org/mrn", "value": mrn or str(next(_counter))}],
               "name": [{"family": family, "given": ["Jane"]}], "gender": "female", "birthDate": "1970-01-01"}
    patient.update(extra)
    return patient


def make_endpoint(address: str = "http://127.0.0.1:8042/dicom-web", **extra) -> dict:
    endpoint = {"resourceType": "Endpoint", "status": "active",
                "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                                "code": "dicom-wado-rs"}]}],
                "name": "PACS", "address": address}
    endpoint.update(extra)
    return endpoint


def make_imaging_study(patient_ref: str = "Patient/example", series: int = 1, instances: int = 2,
                       modality: str = "CT", study_uid: str | None = None, **extra) -> dict:
    study_uid = study_uid or new_uid()
    study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": {"reference": patient_ref},
        "started": "2026-03-01T10:15:00Z",
        "numberOfSeries": series,
        "numberOfInstances": series * instances,
        "series": [{
            "uid": new_uid(), "number": s + 1,
            "modality": {"coding": [{"system": DCM, "code": modality}]},
            "numberOfInstances": instances,
            "instance": [{"uid": new_uid(), "number": i + 1,
                          "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE_STORAGE}"}}
                         for i in range(instances)],
        } for s in range(series)],
    }
    study.update(extra)
    return study
