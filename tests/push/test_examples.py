"""examples/ loads into the server through the `fhirimg load` code path, on both databases,
and loading it a second time changes nothing (the EHR transaction is idempotent)."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from fhirimg.loader import load_paths
from fhirimg.resources import validate_resource

from ..conftest import table_counts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = "http://localhost/fhir"


class FlaskSession:
    """The slice of requests.Session that the loader uses, answered by the Flask test client."""

    def __init__(self, client):
        self.client = client

    def request(self, method: str, url: str, data=None, headers=None, timeout=None):
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return FlaskResponse(self.client.open(path, method=method, data=data, headers=headers or {}))


class FlaskResponse:
    def __init__(self, response):
        self.status_code = response.status_code
        self.text = response.get_data(as_text=True)

    def json(self):
        return json.loads(self.text)


def example_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.json"))


def test_there_are_examples_of_each_kind():
    names = {p.name for p in example_files()}
    assert {"ehr-transaction-ct-thorax.json", "ehr-batch.json", "imagingstudy-example.json",
            "endpoint-example-wadors.json"} <= names


def test_spec_examples_are_valid_r5():
    for path in (EXAMPLES / "spec-r5").glob("*.json"):
        validate_resource(json.loads(path.read_text()))


def test_ehr_transaction_uses_cid29_modality_and_real_sop_classes():
    document = json.loads((EXAMPLES / "ehr-transaction-ct-thorax.json").read_text())
    study = next(e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    assert len(study["series"]) == 2
    for series in study["series"]:
        assert series["modality"]["coding"][0] == {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                   "code": "CT"}
        assert all(i["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2" for i in series["instance"])
    assert study["numberOfInstances"] == sum(len(s["instance"]) for s in study["series"])


def test_every_example_loads_and_reloading_writes_nothing(client, engine):
    summary = load_paths([str(EXAMPLES)], BASE, progress=False, session=FlaskSession(client))
    assert summary.failed == [], summary.describe()
    assert summary.resources >= 7  # 3 (transaction) + 2 (batch writes) + 2 spec examples
    after_first = table_counts(engine)
    again = load_paths([str(EXAMPLES)], BASE, progress=False, session=FlaskSession(client))
    assert again.failed == [], again.describe()
    assert table_counts(engine) == after_first
    study = client.get("/fhir/ImagingStudy?identifier=http://hospital.example.org/accession|ACC-2026-031207")
    found = study.get_json()
    assert found["total"] == 1
    subject = found["entry"][0]["resource"]["subject"]["reference"]
    assert client.get(f"/fhir/{subject}").get_json()["name"][0]["family"] == "Lindqvist"
    assert client.get("/fhir/ImagingStudy/example").status_code == 200
    assert client.get("/fhir/Endpoint/example-wadors").status_code == 200
