"""An ImagingStudy built from the sent files with pydicom alone, independently of fhirimg's
mapping code (which reads the DICOM JSON of the index rows): the two must agree."""
from __future__ import annotations

import io

import pydicom

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}"


def expected_study(files: list[bytes], patient_reference: str, endpoint: str = "Endpoint/fhirimg-dicomweb") -> dict:
    datasets = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]
    first = datasets[0]
    series: dict[str, dict] = {}
    for ds in datasets:
        element = series.setdefault(ds.SeriesInstanceUID, {
            "uid": ds.SeriesInstanceUID, "modality": {"coding": [{"system": DCM, "code": ds.Modality}]},
            **({"number": int(ds.SeriesNumber)} if "SeriesNumber" in ds else {}),
            **({"description": ds.SeriesDescription} if ds.get("SeriesDescription") else {}),
            "instance": []})
        if ds.get("BodyPartExamined"):
            concept = {"text": ds.BodyPartExamined}
            if ds.BodyPartExamined == "CHEST":
                concept["coding"] = [{"system": "http://snomed.info/sct", "code": "51185008"}]
            element["bodySite"] = {"concept": concept}
        element["instance"].append({"uid": ds.SOPInstanceUID,
                                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{ds.SOPClassUID}"},
                                    **({"number": int(ds.InstanceNumber)} if "InstanceNumber" in ds else {})})
    ordered = sorted(series.values(), key=lambda s: (s.get("number", 0), s["uid"]))
    for element in ordered:
        element["instance"].sort(key=lambda i: (i.get("number", 0), i["uid"]))
        element["numberOfInstances"] = len(element["instance"])
    study = {"resourceType": "ImagingStudy",
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{first.StudyInstanceUID}"}],
             "status": "available", "subject": {"reference": patient_reference},
             "endpoint": [{"reference": endpoint}], "series": ordered,
             "numberOfSeries": len(ordered), "numberOfInstances": len(datasets)}
    if first.get("AccessionNumber"):
        study["identifier"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                         "code": "ACSN"}]}, "value": first.AccessionNumber})
    if first.get("StudyDate"):
        study["started"] = date(first.StudyDate)  # no Timezone Offset From UTC: the date only
    if first.get("ReferringPhysicianName"):
        study["referrer"] = {"display": str(first.ReferringPhysicianName).replace("^", " ").strip()}
    if first.get("StudyDescription"):
        study["description"] = first.StudyDescription
    modalities = []
    for element in ordered:
        coding = element["modality"]["coding"][0]
        if {"coding": [coding]} not in modalities:
            modalities.append({"coding": [coding]})
    study["modality"] = modalities
    return study


def without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}
