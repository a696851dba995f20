"""Bundle builders for the push tests: an EHR's transaction for one study, entries, posting."""
from __future__ import annotations

import uuid

from ..factories import DCM, make_endpoint, make_imaging_study, make_patient, new_uid

FHIR = {"Content-Type": "application/fhir+json"}
MRN = "http://hospital.example.org/mrn"
ENDPOINT_IDS = "http://hospital.example.org/endpoints"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def entry(resource: dict | None, method: str, url: str, full_url: str | None = None, **request) -> dict:
    out: dict = {"request": {"method": method, "url": url, **request}}
    if full_url:
        out["fullUrl"] = full_url
    if resource is not None:
        out["resource"] = resource
    return out


def bundle(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def ehr_transaction(mrn: str = "MRN-1", study_uid: str | None = None, series: int = 2, instances: int = 3,
                    patient_method: str = "PUT") -> dict:
    """Patient + WADO-RS Endpoint + ImagingStudy linked by urn:uuid, each written conditionally
    on its business identifier, as an EHR re-sending a study would."""
    study_uid = study_uid or new_uid()
    p_url, e_url, s_url = urn(), urn(), urn()
    patient = make_patient(mrn=mrn)
    endpoint = make_endpoint(identifier=[{"system": ENDPOINT_IDS, "value": "pacs-1"}])
    study = make_imaging_study(patient_ref=p_url, series=series, instances=instances, study_uid=study_uid,
                               endpoint=[{"reference": e_url}])
    for s in study["series"]:
        s["endpoint"] = [{"reference": e_url}]
    patient_request = ({"method": "PUT", "url": f"Patient?identifier={MRN}|{mrn}"} if patient_method == "PUT"
                       else {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|{mrn}"})
    return bundle(
        {"fullUrl": p_url, "resource": patient, "request": patient_request},
        entry(endpoint, "PUT", f"Endpoint?identifier={ENDPOINT_IDS}|pacs-1", e_url),
        entry(study, "PUT", f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}", s_url),
    )


def post_bundle(client, document: dict, **headers):
    return client.post("/fhir", json=document, headers={**FHIR, **headers})


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def statuses(response_bundle: dict) -> list[str]:
    return [e["response"]["status"] for e in response_bundle["entry"]]


def location_id(response_entry: dict) -> str:
    return response_entry["response"]["location"].split("/")[1]


__all__ = ["DCM", "FHIR", "MRN", "bundle", "ehr_transaction", "entry", "location_id", "make_endpoint",
           "make_imaging_study", "make_patient", "ok", "post_bundle", "statuses", "urn"]
